"""Following a job's progress live: what a WatchJob stream sends, for how long, and how many at once.

Postgres is the source of truth: a stream sends the job's events after the client's ``after_sequence``,
in order, until an event that ends the job. Redis notices (one subscription per process, see
``services.common.progress``) only wake a stream early. A stream re-reads Postgres

- on a notice for its job, or when the subscription goes down or comes back;
- every ``poll_s`` (with jitter) while the subscription is down, so a Redis outage only slows it;
- every ``heartbeat_s`` otherwise; if nothing new came, it sends a :class:`Heartbeat` instead, so
  proxies that close idle streams (Envoy, load balancers: often 60 s) keep it open.

At most ``max_streams`` streams are open at once (past it: RESOURCE_EXHAUSTED ``TOO_MANY_STREAMS``), and
:meth:`JobWatcher.drain` ends every open stream with UNAVAILABLE ``SHUTTING_DOWN`` so a server can stop
without waiting for jobs to finish; clients resume elsewhere with ``after_sequence``.

A stream is its caller's: the job is read with the caller's scope before anything is sent or subscribed to, so
another user's job ends the stream at once with NOT_FOUND, the same answer as a job that does not exist, and
every later read (job and events) is filtered by that scope in its query too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from services.common.errors import ResourceExhausted, Unavailable
from services.common.principal import Principal
from services.common.progress import ProgressBus
from services.pipeline.ports import Jobs
from services.pipeline.records import JobEvent

log = logging.getLogger(__name__)

# Streams poll Postgres this much earlier or later than ``poll_s``, so they do not all query at once.
POLL_JITTER = 0.2


@dataclass(frozen=True)
class Heartbeat:
    """Sent on a quiet stream: nothing new; ``sequence`` is the last event sent (or ``after_sequence``)."""

    job_id: uuid.UUID
    sequence: int


class JobWatcher:
    """The WatchJob streams of one process."""

    def __init__(
        self, jobs: Jobs, bus: ProgressBus, *, heartbeat_s: float = 15.0, poll_s: float = 3.0,
        max_streams: int = 1000,
    ) -> None:
        self._jobs = jobs
        self._bus = bus
        self._heartbeat_s = heartbeat_s
        self._poll_s = poll_s
        self._max_streams = max_streams
        self._open = 0
        self._draining = False
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    @property
    def open_streams(self) -> int:
        return self._open

    async def watch(
        self, caller: Principal, job_id: uuid.UUID, after_sequence: int = 0
    ) -> AsyncGenerator[JobEvent | Heartbeat, None]:
        """Events after ``after_sequence`` in order, live, until one that ends the job; a
        :class:`Heartbeat` whenever ``heartbeat_s`` pass without one. NOT_FOUND first and only when ``caller``
        may not see the job."""
        scope = caller.scope
        if self._draining:
            raise _shutting_down(after_sequence)
        if self._open >= self._max_streams:
            raise ResourceExhausted(
                f"this server already follows {self._max_streams} job streams; retry shortly or elsewhere",
                reason="TOO_MANY_STREAMS", metadata={"max_streams": str(self._max_streams)}, retry_delay_s=1.0,
            )
        # Ownership before anything else: no event, heartbeat or subscription for a job the caller may not see.
        await self._jobs.get(job_id, scope=scope)
        self._open += 1
        self._all_closed.clear()
        try:
            async with self._bus.listen(job_id) as notices:
                loop = asyncio.get_running_loop()
                last = after_sequence
                sent_at = loop.time()
                while True:
                    if self._draining:
                        raise _shutting_down(last)
                    # The job row first: if it had ended and no event follows ``last``, the stream is
                    # complete. A retried job has old final events followed by new ones, so the events
                    # decide, not the state alone.
                    job = await self._jobs.get(job_id, scope=scope)
                    events = await self._jobs.events(job_id, last, scope=scope)
                    for event in events:
                        yield event
                        last = event.sequence
                    now = loop.time()
                    if events:  # look again at once: one of them may have ended the job
                        sent_at = now
                        continue
                    if job.terminal:
                        return
                    if now - sent_at >= self._heartbeat_s - 0.01:
                        yield Heartbeat(job_id, last)
                        sent_at = now = loop.time()
                    if self._draining:
                        raise _shutting_down(last)
                    timeout = sent_at + self._heartbeat_s - now
                    if not notices.live:
                        timeout = min(timeout, self._poll_s * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER))
                    await notices.wait(max(timeout, 0.0))
        finally:
            self._open -= 1
            if self._open == 0:
                self._all_closed.set()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """End every open stream with UNAVAILABLE ``SHUTTING_DOWN`` and refuse new ones; returns once
        they have ended (or after ``timeout_s``: a stream blocked on a slow client ends with the server)."""
        self._draining = True
        if self._open:
            log.info("ending %d job streams: shutting down", self._open)
        self._bus.wake_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), timeout_s)


def _shutting_down(last: int) -> Unavailable:
    return Unavailable(
        f"the server is shutting down; watch again with after_sequence={last} to resume without a gap",
        reason="SHUTTING_DOWN", metadata={"after_sequence": str(last)}, retry_delay_s=0.5,
    )
