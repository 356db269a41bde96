"""Redis pub/sub of "job changed" notices: best-effort publishing, and one subscription per process.

Postgres holds every job event; a notice on ``clipmind:job:<id>`` only says "look again". Watchers of a
process share ONE pattern subscription (``clipmind:job:*``) held by a dispatcher task, which fans each
notice out to the local listeners of that job. Nothing per stream lives in Redis, so thousands of streams
cost one connection.

When Redis goes away the dispatcher reconnects with capped exponential backoff, and listeners see
``live`` turn False (and are woken) so they poll Postgres instead; once the subscription is back every
listener is woken again, so notices published during the outage are not missed. Publishing never raises
(:meth:`ProgressBus.publish_best_effort`), and every Redis call has a connect and read timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

__all__ = ["CHANNEL_PATTERN", "ProgressBus", "ProgressListener", "progress_channel"]

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "clipmind:job:"
CHANNEL_PATTERN = CHANNEL_PREFIX + "*"


def progress_channel(job_id: uuid.UUID) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


@dataclass(eq=False)
class _Job:
    """The local listeners of one job: a wake counter and the event the next wake sets."""

    listeners: int = 0
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


class ProgressListener:
    """One watcher's view of its job's notices (from :meth:`ProgressBus.listen`)."""

    def __init__(self, bus: ProgressBus, job: _Job) -> None:
        self._bus = bus
        self._job = job
        self._seen = job.version

    @property
    def live(self) -> bool:
        """True while the process's subscription is up, so a notice will wake :meth:`wait`."""
        return self._bus.live

    async def wait(self, timeout_s: float) -> bool:
        """Until a notice for the job (or a change of ``live``, or :meth:`ProgressBus.wake_all`) or
        ``timeout_s``; True when woken. A wake since the last call returns at once, so one that arrives
        while the caller reads Postgres is never lost."""
        job = self._job
        if job.version == self._seen and timeout_s > 0:
            changed = job.changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await changed.wait()
        woken = job.version != self._seen
        self._seen = job.version
        return woken


class ProgressBus:
    """Publishes "job changed" notices and delivers them to local listeners through one subscription."""

    def __init__(
        self, client: aioredis.Redis, subscriber: aioredis.Redis | None = None, *,
        publish_timeout_s: float = 2.0, health_check_s: float = 5.0, max_backoff_s: float = 5.0,
    ) -> None:
        self._redis = client
        self._subscriber = subscriber if subscriber is not None else client
        self._publish_timeout_s = publish_timeout_s
        self._health_check_s = health_check_s
        self._max_backoff_s = max_backoff_s
        self._jobs: dict[str, _Job] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._live = False
        self._closed = False

    @classmethod
    def connect(
        cls, redis_url: str, *, socket_timeout_s: float = 5.0, connect_timeout_s: float = 2.0,
        health_check_s: float = 5.0, max_backoff_s: float = 5.0,
    ) -> ProgressBus:
        """Clients with connect/read timeouts, so no call waits on an unreachable Redis for long.

        The publishing client retries once (a pooled connection may be stale after a Redis restart) and
        checks idle connections every ``health_check_s``; the subscriber retries nothing, because the
        dispatcher reconnects on its own, with backoff up to ``max_backoff_s``."""
        client = aioredis.from_url(
            redis_url, socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
            health_check_interval=health_check_s, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        )
        subscriber = aioredis.from_url(
            redis_url, socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, subscriber, publish_timeout_s=socket_timeout_s, health_check_s=health_check_s,
                   max_backoff_s=max_backoff_s)

    # -- publishing -------------------------------------------------------------------------------

    async def publish(self, job_id: uuid.UUID, sequence: int) -> None:
        await self._redis.publish(progress_channel(job_id), json.dumps({"sequence": sequence}))

    async def publish_best_effort(self, job_id: uuid.UUID, sequence: int) -> None:
        """A lost notice only delays watchers (they also poll Postgres), so Redis trouble is logged, not raised."""
        try:
            await asyncio.wait_for(self.publish(job_id, sequence), self._publish_timeout_s)
        except Exception as exc:
            log.warning("progress notice for job %s not published: %s: %s", job_id, type(exc).__name__, exc)

    # -- listening --------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True while the subscription is up and confirmed."""
        return self._live

    @property
    def listened_jobs(self) -> int:
        """Jobs with at least one local listener (a gauge; also how tests see that nothing leaks)."""
        return len(self._jobs)

    @asynccontextmanager
    async def listen(self, job_id: uuid.UUID) -> AsyncIterator[ProgressListener]:
        """Register a listener for ``job_id`` for the duration of the block; starts the dispatcher."""
        key = progress_channel(job_id)
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = _Job()
        job.listeners += 1
        self._ensure_dispatcher()
        try:
            yield ProgressListener(self, job)
        finally:
            job.listeners -= 1
            if job.listeners == 0 and self._jobs.get(key) is job:
                del self._jobs[key]

    def wake_all(self) -> None:
        """Wake every local listener (they look at Postgres again)."""
        for job in self._jobs.values():
            job.wake()

    def _ensure_dispatcher(self) -> None:
        if self._closed or (self._dispatcher is not None and not self._dispatcher.done()):
            return
        self._dispatcher = asyncio.create_task(self._dispatch(), name="progress-bus-dispatcher")

    def _set_live(self, live: bool) -> None:
        if live != self._live:
            self._live = live
            self.wake_all()

    async def _dispatch(self) -> None:
        failures = 0
        while not self._closed:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.psubscribe(CHANNEL_PATTERN)
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._live:
                    failures = 0
                    log.warning("progress subscription lost (%s: %s); watchers poll Postgres until it is back",
                                type(exc).__name__, exc)
                else:
                    log.debug("progress subscription not up: %s: %s", type(exc).__name__, exc)
            finally:
                self._set_live(False)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
            failures += 1
            delay = min(self._max_backoff_s, 0.1 * 2 ** (failures - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _pump(self, pubsub: aioredis.client.PubSub) -> None:
        """Deliver notices until the connection fails (raises). Silence is checked with a PING every
        ``health_check_s``: nothing heard (a PONG is a message too) for twice that means a dead link."""
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        pinged = False
        while not self._closed:
            message = await pubsub.get_message(timeout=min(1.0, self._health_check_s))
            now = loop.time()
            if message is None:
                silent = now - last_heard
                if pinged and silent >= 2 * self._health_check_s:
                    raise ConnectionError(f"no reply from Redis for {silent:.1f} s")
                if not pinged and silent >= self._health_check_s:
                    await pubsub.ping()
                    pinged = True
                continue
            last_heard, pinged = now, False
            kind = message["type"]
            if kind == "pmessage":
                channel = message["channel"]
                job = self._jobs.get(channel.decode() if isinstance(channel, bytes) else channel)
                if job is not None:
                    job.wake()
            elif kind == "psubscribe" and not self._live:
                log.info("progress subscription up (%s)", CHANNEL_PATTERN)
                self._set_live(True)

    async def close(self) -> None:
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._dispatcher
            self._dispatcher = None
        self._set_live(False)
        await self._redis.aclose()
        if self._subscriber is not self._redis:
            await self._subscriber.aclose()
