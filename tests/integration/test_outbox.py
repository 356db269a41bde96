"""The transactional outbox delivers every committed fact, at least once, and never a rolled-back one.

Against real PostgreSQL, each test in a fresh schema holding ``OUTBOX_DDL`` (pools select it through
``search_path``, as each service's pool selects its own): delivery in id order after a commit, retries with
backoff that do not hold back other rows, rows that can never succeed kept (not dropped), two relays sharing
one table, ``wait_delivered`` with and without a healthy consumer, a relay restarted mid-backlog, a graceful
stop, and a database that is unavailable for a while.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from services.common import outbox, request_context
from services.common.db import Database
from services.common.errors import NotFound, Unavailable
from services.common.outbox import OUTBOX_DDL, OutboxRelay

pytestmark = [pytest.mark.integration]

Fast: dict[str, Any] = {"poll_s": 0.05, "base_backoff_s": 0.02, "max_backoff_s": 0.1}

OpenDb = Callable[[], Awaitable[Database]]


@pytest.fixture
async def open_db(pg_dsn: str) -> AsyncIterator[OpenDb]:
    """Opens pools (as many as a test wants) on a fresh schema holding the outbox table."""
    schema = f"test_outbox_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_dsn)
    await admin.execute(f"CREATE SCHEMA {schema}")
    await admin.execute(f"SET search_path TO {schema}")
    await admin.execute(OUTBOX_DDL)
    opened: list[Database] = []

    async def open_() -> Database:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4, server_settings={"search_path": schema})
        assert pool is not None
        opened.append(Database(pool, acquire_timeout_s=5))
        return opened[-1]

    try:
        yield open_
    finally:
        for db in opened:
            await db.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def add_committed(db: Database, *facts: tuple[str, bytes]) -> list[int]:
    async with db.acquire() as conn, conn.transaction():
        return [await outbox.add(conn, topic, payload) for topic, payload in facts]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_committed_rows_are_delivered_once_in_id_order_and_rolled_back_rows_never(open_db: OpenDb) -> None:
    db = await open_db()
    got: list[bytes] = []

    async def record(payload: bytes) -> None:
        got.append(payload)

    relay = OutboxRelay(db, {"video.stored": record}, name="t", **Fast)
    relay.start()
    try:
        ids = await add_committed(db, *[("video.stored", f"v{i}".encode()) for i in range(5)])
        assert ids == sorted(ids)
        with pytest.raises(ZeroDivisionError):
            async with db.acquire() as conn, conn.transaction():
                await outbox.add(conn, "video.stored", b"rolled-back")
                raise ZeroDivisionError
        relay.wake()
        assert await relay.wait_delivered(ids[-1], 5.0)
        assert await relay.pending() == 0  # "delivered" means deleted: committed for every replica
        await asyncio.sleep(0.3)  # several polls: nothing comes twice, the rolled-back fact never
        assert got == [f"v{i}".encode() for i in range(5)]
        assert await relay.pending() == 0 and await relay.oldest_age_s() == 0.0
        with pytest.raises(RuntimeError):  # a fact outside a transaction would not be atomic with its state
            async with db.acquire() as conn:
                await outbox.add(conn, "video.stored", b"x")
    finally:
        await relay.stop()


async def test_a_failing_handler_backs_off_and_records_errors_while_other_rows_flow(open_db: OpenDb) -> None:
    db = await open_db()
    calls: list[float] = []
    seen_rows: list[tuple[int, str]] = []
    ok: list[bytes] = []

    async def flaky(payload: bytes) -> None:
        calls.append(time.monotonic())
        row = await db.fetchrow("SELECT attempts, last_error FROM outbox WHERE payload = $1", payload)
        assert row is not None
        seen_rows.append((row["attempts"], row["last_error"]))
        if len(calls) <= 3:
            raise Unavailable(f"pipeline down {len(calls)}")

    async def fine(payload: bytes) -> None:
        ok.append(payload)

    relay = OutboxRelay(db, {"job.submit": flaky, "video.ready": fine}, name="t", poll_s=0.05,
                        base_backoff_s=0.2, max_backoff_s=0.8)
    relay.start()
    try:
        [flaky_id, *ok_ids] = await add_committed(db, ("job.submit", b"j1"), ("video.ready", b"r1"),
                                                  ("video.ready", b"r2"))
        relay.wake()
        assert await relay.wait_delivered(ok_ids[-1], 2.0)
        assert ok == [b"r1", b"r2"]
        await eventually(lambda: _attempts(db, flaky_id, at_least=1))
        assert not await relay.wait_delivered(flaky_id, 0.05)
        assert await relay.pending() == 1
        ok_ids += await add_committed(db, ("video.ready", b"r3"))  # flows while j1 backs off
        relay.wake()
        assert await relay.wait_delivered(ok_ids[-1], 2.0) and ok == [b"r1", b"r2", b"r3"]
        assert len(calls) < 4

        assert await relay.wait_delivered(flaky_id, 5.0)
        assert len(calls) == 4 and await relay.pending() == 0
        # Each attempt saw the previous failures recorded on its row.
        assert [a for a, _ in seen_rows] == [0, 1, 2, 3]
        assert seen_rows[0][1] == "" and "pipeline down 3" in seen_rows[3][1] and "UNAVAILABLE" in seen_rows[3][1]
        # Backoff grows: attempt k waits base * 2**k with jitter in [50 %, 100 %], capped.
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        for k, gap in enumerate(gaps):
            assert gap >= min(0.8, 0.2 * 2**k) * 0.5 - 0.01, gaps
    finally:
        await relay.stop()


async def _attempts(db: Database, outbox_id: int, *, at_least: int) -> bool:
    return bool(await db.fetchval("SELECT attempts >= $2 FROM outbox WHERE id = $1", outbox_id, at_least))


async def test_permanent_errors_and_hung_handlers_are_kept_and_retried_other_topics_left_alone(
    open_db: OpenDb,
) -> None:
    db = await open_db()
    done: list[bytes] = []

    async def gone(payload: bytes) -> None:
        raise NotFound("video deleted", reason="VIDEO_NOT_FOUND")  # a handler bug: it should swallow this

    async def hangs(payload: bytes) -> None:
        await asyncio.sleep(10)

    async def fine(payload: bytes) -> None:
        done.append(payload)

    relay = OutboxRelay(db, {"gone": gone, "hangs": hangs, "fine": fine}, name="t", handler_timeout_s=0.1, **Fast)
    relay.start()
    try:
        unknown, perm, hung, ok = await add_committed(db, ("nobody.listens", b"u"), ("gone", b"g"),
                                                     ("hangs", b"h"), ("fine", b"f"))
        relay.wake()
        # Rows that fail (slowly, and fall due again at once) before it do not starve the row after them.
        assert await relay.wait_delivered(ok, 3.0) and done == [b"f"]

        async def all_retried() -> bool:
            return all([await _attempts(db, i, at_least=2) for i in (perm, hung)])

        await eventually(all_retried)
        errors = {r["id"]: r["last_error"] for r in await db.fetch("SELECT id, last_error FROM outbox")}
        assert errors[unknown] == ""  # a topic this relay does not handle is not its business: never claimed
        assert await db.fetchval("SELECT attempts FROM outbox WHERE id = $1", unknown) == 0
        assert "NOT_FOUND" in errors[perm]
        assert "TimeoutError" in errors[hung]
        assert await relay.pending() == 2 and await relay.oldest_age_s() > 0
    finally:
        await relay.stop()


async def test_two_relays_on_one_table_deliver_every_row_exactly_once(open_db: OpenDb) -> None:
    db_a, db_b = await open_db(), await open_db()
    delivered: Counter[bytes] = Counter()
    by_relay: Counter[str] = Counter()

    def handler(relay_name: str) -> Callable[[bytes], Awaitable[None]]:
        async def handle(payload: bytes) -> None:
            await asyncio.sleep(0.001)  # let the other relay claim meanwhile
            delivered[payload] += 1
            by_relay[relay_name] += 1
        return handle

    relays = [OutboxRelay(db, {"t": handler(name)}, name=name, batch_size=10, **Fast)
              for db, name in ((db_a, "a"), (db_b, "b"))]
    for relay in relays:
        relay.start()
    try:
        for chunk in range(20):
            await add_committed(db_a, *[("t", f"{chunk}-{i}".encode()) for i in range(10)])
        for relay in relays:
            relay.wake()

        async def drained() -> bool:
            return await relays[0].pending() == 0

        await eventually(drained, 8.0)
        await asyncio.sleep(0.2)
        assert len(delivered) == 200 and set(delivered.values()) == {1}
        assert by_relay["a"] > 0 and by_relay["b"] > 0, by_relay
    finally:
        for relay in relays:
            await relay.stop()


async def test_wait_delivered_is_quick_after_wake_and_false_at_the_timeout(open_db: OpenDb) -> None:
    db = await open_db()
    healthy = asyncio.Event()

    async def consumer(payload: bytes) -> None:
        if not healthy.is_set():
            raise Unavailable("consumer down")

    # A long poll: only wake() can make delivery quick.
    relay = OutboxRelay(db, {"t": consumer}, name="t", poll_s=5.0, base_backoff_s=0.02, max_backoff_s=0.05)
    relay.start()
    try:
        [down_id] = await add_committed(db, ("t", b"1"))
        relay.wake()
        started = time.monotonic()
        assert not await relay.wait_delivered(down_id, 0.3)
        assert 0.29 <= time.monotonic() - started < 1.0

        healthy.set()
        [up_id] = await add_committed(db, ("t", b"2"))
        relay.wake()
        started = time.monotonic()
        assert await relay.wait_delivered(up_id, 2.0)
        assert time.monotonic() - started < 0.5
        assert await relay.wait_delivered(up_id, 0.01)  # already delivered: answered at once

        # A row delivered by another replica is seen through the table, even by a relay never started.
        other = OutboxRelay(db, {"t": consumer}, name="other", poll_s=0.05)
        assert await other.wait_delivered(up_id, 1.0)
    finally:
        await relay.stop()


async def test_a_relay_restarted_later_delivers_what_was_left(open_db: OpenDb) -> None:
    first_db = await open_db()
    first: list[bytes] = []
    stuck = asyncio.Event()

    async def slow_then_stuck(payload: bytes) -> None:
        if len(first) == 2:
            stuck.set()
            await asyncio.sleep(60)  # the process is stopped in the middle of this delivery
        first.append(payload)

    relay = OutboxRelay(first_db, {"t": slow_then_stuck}, name="first", **Fast)
    ids = await add_committed(first_db, *[("t", f"{i}".encode()) for i in range(5)])
    relay.start()
    relay.wake()
    await asyncio.wait_for(stuck.wait(), 5.0)
    started = time.monotonic()
    await relay.stop(grace_s=0.2)
    assert time.monotonic() - started < 2.0
    assert first == [b"0", b"1"] and await relay.pending() == 3
    await first_db.close()

    second: list[bytes] = []

    async def record(payload: bytes) -> None:
        second.append(payload)

    restarted = OutboxRelay(await open_db(), {"t": record}, name="second", **Fast)
    restarted.start()  # no wake: the poll finds rows written before the restart
    try:
        assert await restarted.wait_delivered(ids[-1], 5.0)
        assert second == [b"2", b"3", b"4"] and await restarted.pending() == 0
    finally:
        await restarted.stop()


async def test_stop_lets_the_row_in_hand_finish_and_commit(open_db: OpenDb) -> None:
    db = await open_db()
    started, got = asyncio.Event(), []

    async def slow(payload: bytes) -> None:
        started.set()
        await asyncio.sleep(0.2)
        got.append(payload)

    relay = OutboxRelay(db, {"t": slow}, name="t", **Fast)
    ids = await add_committed(db, ("t", b"a"), ("t", b"b"))
    relay.start()
    await asyncio.wait_for(started.wait(), 5.0)
    await relay.stop(grace_s=2.0)
    assert got == [b"a"]  # finished, not cancelled; "b" was not started
    assert [r["id"] for r in await db.fetch("SELECT id FROM outbox")] == ids[1:]


class FlakyDatabase(Database):
    """A database that is unavailable for its first ``outages`` acquisitions."""

    def __init__(self, inner: Database, outages: int) -> None:
        super().__init__(inner.raw, acquire_timeout_s=inner.acquire_timeout_s)
        self.outages = outages

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if self.outages > 0:
            self.outages -= 1
            raise Unavailable("the database is unreachable right now", reason="DATABASE_UNAVAILABLE")
        async with super().acquire() as conn:
            yield conn


async def test_the_relay_survives_an_unavailable_database_and_delivers_after(open_db: OpenDb) -> None:
    db = await open_db()
    ids = await add_committed(db, ("t", b"x"))
    flaky = FlakyDatabase(db, outages=4)
    got: list[bytes] = []

    async def record(payload: bytes) -> None:
        got.append(payload)

    relay = OutboxRelay(flaky, {"t": record}, name="t", **Fast)
    relay.start()
    try:
        assert await relay.wait_delivered(ids[0], 5.0)
        assert got == [b"x"] and flaky.outages == 0
    finally:
        await relay.stop()


async def test_two_producers_sharing_one_table_never_touch_each_others_rows(open_db: OpenDb) -> None:
    """Two services still in one schema share the table: each relay takes only its own topics, so one whose
    consumer is down does not delay, fail or back off the other's rows."""
    db = await open_db()
    search_log: list[bytes] = []

    async def analytics_down(payload: bytes) -> None:
        raise Unavailable("analytics is down", reason="UNAVAILABLE")

    async def analytics_up(payload: bytes) -> None:
        search_log.append(payload)

    async def submit(payload: bytes) -> None:
        pass

    ingest = OutboxRelay(db, {"pipeline.submit": submit}, name="ingest", **Fast)
    search = OutboxRelay(db, {"analytics.log": analytics_down}, name="search", **Fast)
    ingest.start()
    search.start()
    try:
        log_row, submit_row = await add_committed(db, ("analytics.log", b"s1"), ("pipeline.submit", b"v1"))
        ingest.wake()
        search.wake()
        assert await ingest.wait_delivered(submit_row, 3.0)
        await eventually(lambda: _attempts(db, log_row, at_least=1))
        assert await ingest.pending() == 0 and await search.pending() == 1
    finally:
        await search.stop()
    search = OutboxRelay(db, {"analytics.log": analytics_up}, name="search", **Fast)
    search.start()
    try:
        search.wake()
        assert await search.wait_delivered(log_row, 5.0) and search_log == [b"s1"]
    finally:
        await search.stop()
        await ingest.stop()


async def test_a_delivery_continues_the_trace_of_the_request_that_added_the_fact(open_db: OpenDb) -> None:
    """The trace context and the request id go into the row with the fact, so whichever relay delivers it (here a
    new one, as after a restart) runs the handler in that trace and under that request id: the request context it
    binds names both (and the handler's calls and log lines carry them)."""
    db = await open_db()
    traceparent = "00-" + uuid.uuid4().hex + "-" + uuid.uuid4().hex[:16] + "-01"
    with request_context.bind(traceparent=traceparent, request_id="upload-req-42"):
        await add_committed(db, ("traced", b"1"))
    await add_committed(db, ("traced", b"2"))  # outside any request: a trace of its own
    seen: dict[bytes, str] = {}
    request_ids: dict[bytes, str] = {}

    async def handler(payload: bytes) -> None:
        seen[payload] = request_context.current().traceparent
        request_ids[payload] = request_context.current().request_id

    relay = OutboxRelay(db, {"traced": handler}, name="t", **Fast)
    relay.start()
    try:
        await eventually(lambda: _done(seen, 2))
    finally:
        await relay.stop()
    assert seen[b"1"].split("-")[1] == traceparent.split("-")[1]
    assert traceparent.split("-")[1] not in seen[b"2"]
    assert request_ids == {b"1": "upload-req-42", b"2": ""}  # no request: its calls get fresh ids


async def _done(seen: dict[bytes, str], count: int) -> bool:
    return len(seen) == count
