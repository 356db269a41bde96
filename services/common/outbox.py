"""Transactional outbox: a fact one service commits and another must act on, delivered after the commit.

What it is for: ingest stores a video and the pipeline must get a job; the pipeline finishes a job and ingest
must mark the video ready. The producer writes the fact with :func:`add` in the same transaction as its own
rows, so the fact exists exactly when the state change does. An :class:`OutboxRelay` in the same process
then hands each row to the handler of its topic (usually an idempotent internal gRPC call) and deletes it.
A consumer that is down or restarting only delays the work; nothing is lost.

Every service has its own ``outbox`` table (``OUTBOX_DDL``) in its own schema; the connection's
``search_path`` picks it, so the SQL here is unqualified. A relay claims only the rows of the topics it has
handlers for, so producers that share one table (services still in one schema, or two relays of one
process) never take, delay or fail each other's rows.

Guarantees:

* **No loss.** A committed row stays until its handler has succeeded; a rolled-back one never existed. Rows
  survive restarts of both sides; a new relay (or another replica) delivers what is left. There is no
  dead-letter: a row that never succeeds stays, retried at the cap; watch ``oldest_age_s``.
* **At-least-once.** A crash (or lost connection, or :meth:`OutboxRelay.stop` cancelling a handler)
  between a handler's success and the commit of the row's delete delivers that row again. **Handlers must
  be idempotent.**
* **Order.** A relay attempts due rows in id order. A failing row backs off and does not hold back later
  rows (one sick message must not stall the service), so order is *not* guaranteed across a retry, nor
  between replicas: facts must be safe to apply in any order.
* **Replicas.** A row is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` in a transaction that lasts
  until it is deleted or rescheduled, so several relays on one table never deliver a row at the same
  time; a row locked by another relay is skipped.

Handler contract: ``async def handler(payload: bytes) -> None``. Returning means "done": the row is
deleted. Raising anything means "try again later" (exponential backoff with jitter, capped at
``max_backoff_s``; ``attempts`` and ``last_error`` recorded on the row). The relay never drops a row on its
own, whatever the error: a handler that receives an answer meaning "already done" or "nothing to do any
more" (ALREADY_EXISTS, NOT_FOUND for a deleted video, FAILED_PRECONDITION for a job already finished...)
must swallow it and return. A permanent :class:`ClipMindError` that escapes is logged as an error (a bug in
the handler) and retried at the backoff cap, visible in :meth:`OutboxRelay.pending` and
:meth:`OutboxRelay.oldest_age_s`. A row whose topic no relay handles is never claimed: it waits, visible in
the table, for the relay (a deploy) that handles it.

Holding a connection while handlers run: the claim's row lock lives in a transaction, so the relay holds
one pooled connection while a handler (a gRPC call with a deadline of ~10 s) runs — one connection per
relay, acceptable. Each row is claimed and settled in *its own* transaction (``LIMIT 1``), not a batch in
one: a crash or a stop then re-delivers only the row in hand, other replicas can take every other row
meanwhile, and ``wait_delivered`` answers as soon as that row's delete commits instead of at the end of a
batch. The cost, three short statements per row, is nothing at this outbox's rate (a few rows per video).
A pass keeps its connection for at most ``batch_size`` rows or ``batch_time_s``, then gives it back and
starts over; each handler call is bounded by ``handler_timeout_s`` (a timeout counts as a failure). A
handler may use the same pool for its own queries (the pool needs a second connection for that) but must
not touch the outbox rows.

When the database is unavailable (``Unavailable`` from ``Database.acquire``, a dropped connection, any
other error of a pass), the loop logs, pauses with backoff and tries again: it never dies. The row in hand
when the connection fails is rolled back and delivered again (at-least-once).

Why here and not a library: no maintained asyncpg outbox library fits (the known ones are tied to an ORM,
a broker such as Kafka, or a framework), and the whole mechanism is one table and a short loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from services.common import request_context, tracing
from services.common.db import Database
from services.common.errors import ClipMindError

log = logging.getLogger(__name__)

OUTBOX_DDL = """\
CREATE TABLE outbox (
    id                bigserial PRIMARY KEY,
    topic             text NOT NULL,
    payload           bytea NOT NULL,
    create_time       timestamptz NOT NULL DEFAULT now(),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    last_error        text NOT NULL DEFAULT '',
    trace_context     text NOT NULL DEFAULT ''
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_time, id);
"""

Handler = Callable[[bytes], Awaitable[None]]

# Codes that mean "retrying cannot help": a handler should have swallowed them (see the module docstring).
PERMANENT_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION",
                             "OUT_OF_RANGE", "PERMISSION_DENIED", "UNAUTHENTICATED", "UNIMPLEMENTED"})
_MAX_ERROR_CHARS = 500
_RECENT = 4096  # delivered ids remembered for wait_delivered calls that come after the delivery


async def add(conn: asyncpg.Connection, topic: str, payload: bytes) -> int:
    """Write a fact for ``topic`` inside the caller's transaction; returns its outbox id.

    Call the relay's :meth:`OutboxRelay.wake` after the commit for immediate delivery."""
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.add must run inside the transaction that commits the fact")
    if not topic:
        raise ValueError("outbox topic must not be empty")
    # The trace context of the request adding the fact goes with it, so that its delivery (an ``outbox.deliver``
    # span and the handler's calls) continues that request's trace: an upload → SubmitVideoJob → the worker's job.
    # The request id goes with it as well, so the delivery's log lines and calls carry the same id as the request's.
    carried = tracing.carrier()
    request_id = request_context.current().request_id
    if request_id:
        carried[request_context.REQUEST_ID_KEY] = request_id
    return int(await conn.fetchval(
        "INSERT INTO outbox (topic, payload, trace_context) VALUES ($1, $2, $3) RETURNING id",
        topic, payload, json.dumps(carried) if carried else ""))


def _trace_of(row: asyncpg.Record) -> dict[str, str] | None:
    """The carried trace context (and request id) of a claimed row (None for none, or an unreadable one: a new
    trace and request id)."""
    try:
        carried = json.loads(row["trace_context"]) if row["trace_context"] else None
    except ValueError:
        return None
    return carried if isinstance(carried, dict) else None


class OutboxRelay:
    """Delivers this service's outbox rows to the handlers of their topics (see the module docstring)."""

    def __init__(
        self, db: Database, handlers: Mapping[str, Handler], *, name: str, batch_size: int = 50,
        poll_s: float = 1.0, base_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
        batch_time_s: float = 5.0, handler_timeout_s: float = 30.0,
    ) -> None:
        self._db = db
        self._handlers = dict(handlers)
        self._topics = sorted(self._handlers)
        self.name = name
        self._batch_size = batch_size
        self._poll_s = poll_s
        self._base_backoff_s = base_backoff_s
        self._max_backoff_s = max_backoff_s
        self._batch_time_s = batch_time_s
        self._handler_timeout_s = handler_timeout_s
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._cursor = 0  # id of the last row attempted by the current sweep (see _pass)
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}
        self._recent: deque[int] = deque(maxlen=_RECENT)
        self._recent_set: set[int] = set()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"outbox relay {self.name} already started")
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.name}")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop after the row in hand (so its delete commits), cancelling it after ``grace_s``."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def wake(self) -> None:
        """Look for due rows now (call right after committing a row)."""
        self._wakeup.set()

    async def deliver_soon(self, outbox_id: int, timeout_s: float) -> bool:
        """Wake the relay for row ``outbox_id``, just committed, and wait up to ``timeout_s`` for its delivery
        (so that in the usual case the other service has acted when the caller answers); False when it is still
        pending, to be delivered later."""
        self.wake()
        return await self.wait_delivered(outbox_id, timeout_s)

    async def wait_delivered(self, outbox_id: int, timeout_s: float) -> bool:
        """True once row ``outbox_id`` (committed by ``add``) has been delivered — its handler succeeded and
        the row is deleted — and False after ``timeout_s``. Never raises for a database that is down.

        Deliveries by this relay are seen at once; by another replica, at the next check of the table
        (every ``poll_s``). A database that cannot be asked counts as "not yet"."""
        if outbox_id in self._recent_set:
            return True
        deadline = time.monotonic() + timeout_s
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(outbox_id, set()).add(future)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), min(self._poll_s, remaining))
                    return True
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    with contextlib.suppress(Exception):
                        query = self._db.fetchval("SELECT 1 FROM outbox WHERE id = $1", outbox_id)
                        if await asyncio.wait_for(query, remaining) is None:
                            return True
        finally:
            waiters = self._waiters.get(outbox_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[outbox_id]

    async def pending(self) -> int:
        """Rows waiting for delivery (due or backing off)."""
        return int(await self._db.fetchval("SELECT count(*) FROM outbox WHERE topic = ANY($1::text[])", self._topics))

    async def oldest_age_s(self) -> float:
        """Age in seconds of the oldest waiting row; 0 when none."""
        age = await self._db.fetchval(
            "SELECT EXTRACT(EPOCH FROM now() - min(create_time))::float8 FROM outbox WHERE topic = ANY($1::text[])",
            self._topics)
        return float(age or 0.0)

    def _backoff_s(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``: exponential, capped, with jitter in [50 %, 100 %]."""
        capped = min(self._max_backoff_s, self._base_backoff_s * 2.0 ** min(attempts, 32))
        return capped * random.uniform(0.5, 1.0)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wakeup.clear()  # before the claim: a wake during the pass makes another pass
            try:
                more, sleep_s = await self._pass()
                failures = 0
            except Exception as exc:  # never die: the database may be down or restarting
                failures += 1
                more, sleep_s = False, self._backoff_s(failures - 1)
                if failures <= 3 or failures & (failures - 1) == 0:
                    log.warning("outbox relay %s: pass failed (%d in a row), retrying in %.2f s: %s: %s",
                                self.name, failures, sleep_s, type(exc).__name__, exc)
            if more or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), sleep_s)

    async def _pass(self) -> tuple[bool, float]:
        """Deliver up to ``batch_size`` due rows on one connection, each claimed and settled in its own
        transaction; returns (more work may be waiting, seconds until the next row falls due).

        Passes sweep the table in id order from a cursor kept across passes and start over from the lowest id
        when they reach the end: a row that fails slowly and falls due again at once cannot starve the rows
        after it."""
        started = time.monotonic()
        swept_from = self._cursor
        async with self._db.acquire() as conn:
            for _ in range(self._batch_size):
                if self._stopping or time.monotonic() - started > self._batch_time_s:
                    return True, 0.0
                async with conn.transaction():
                    row = await conn.fetchrow(
                        "SELECT id, topic, payload, attempts, trace_context FROM outbox "
                        "WHERE id > $1 AND next_attempt_time <= now() "
                        "AND topic = ANY($2::text[]) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                        self._cursor, self._topics)
                    if row is None:
                        break
                    delivered = await self._deliver(conn, row)
                self._cursor = row["id"]
                if delivered:  # committed: the row is gone for every replica
                    self._delivered(row["id"])
            else:
                return True, 0.0
            self._cursor = 0
            if swept_from > 0:  # rows before the cursor may have fallen due meanwhile: sweep them now
                return True, 0.0
            # Rows due but not claimable are locked by another relay: not waited for here (poll fallback).
            next_due = await conn.fetchval(
                "SELECT EXTRACT(EPOCH FROM min(next_attempt_time) - clock_timestamp())::float8 FROM outbox "
                "WHERE next_attempt_time > clock_timestamp() AND topic = ANY($1::text[])", self._topics)
        return False, self._poll_s if next_due is None else max(0.01, min(self._poll_s, next_due))

    async def _deliver(self, conn: asyncpg.Connection, row: asyncpg.Record) -> bool:
        """Run the row's handler; delete the row (True) or record the failure and back off (False)."""
        outbox_id, topic, attempts = row["id"], row["topic"], row["attempts"]
        handler = self._handlers[topic]  # only rows of handled topics are claimed
        try:
            carried = _trace_of(row)
            request_id = (carried or {}).get(request_context.REQUEST_ID_KEY)
            with request_context.bind(request_id=request_id or None), tracing.continued_span(
                    "outbox.deliver", carried, attributes={
                    "clipmind.outbox.topic": topic, "clipmind.outbox.id": outbox_id,
                    "clipmind.outbox.attempt": attempts + 1, "clipmind.outbox.relay": self.name}):
                async with asyncio.timeout(self._handler_timeout_s):
                    await handler(bytes(row["payload"]))
        except Exception as exc:
            await self._failed(conn, outbox_id, topic, attempts, exc)
            return False
        await conn.execute("DELETE FROM outbox WHERE id = $1", outbox_id)
        return True

    async def _failed(self, conn: asyncpg.Connection, outbox_id: int, topic: str, attempts: int,
                      exc: Exception) -> None:
        permanent = isinstance(exc, ClipMindError) and exc.code in PERMANENT_CODES
        delay = self._max_backoff_s if permanent else self._backoff_s(attempts)
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        await conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, "
            "next_attempt_time = now() + make_interval(secs => $3) WHERE id = $1",
            outbox_id, error[:_MAX_ERROR_CHARS], delay)
        attempt = attempts + 1
        if attempt <= 3 or attempt & (attempt - 1) == 0:  # the first failures, then at 4, 8, 16...
            if permanent:
                log.error("outbox relay %s: row %d (%s), attempt %d: retrying cannot help (%s); the row is kept "
                          "and retried every %.1f s — a handler must swallow outcomes that mean done",
                          self.name, outbox_id, topic, attempt, error, delay)
            else:
                log.warning("outbox relay %s: row %d (%s) failed on attempt %d, retrying in %.2f s: %s",
                            self.name, outbox_id, topic, attempt, delay, error)

    def _delivered(self, outbox_id: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(outbox_id)
        self._recent_set.add(outbox_id)
        for future in self._waiters.pop(outbox_id, ()):
            if not future.done():
                future.set_result(None)
