"""Redis adapters: the arq job queue that feeds workers, and the pub/sub channel of job progress."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job as ArqJob
from redis.exceptions import RedisError

from services.common.records import queue_key

__all__ = [
    "PENDING_STATES", "ArqJobQueue", "JobQueue", "ProgressBus", "enqueue_or_leave_to_sweep", "queue_key",
]

log = logging.getLogger(__name__)

PROCESS_VIDEO = "process_video"
QUEUE_NAME = "clipmind:queue:default"


# Answers of JobQueue.state: the entry waits, runs, or is gone (never enqueued, lost, or its result expired).
PENDING_STATES = frozenset({"queued", "deferred", "in_progress"})


class JobQueue(Protocol):
    async def enqueue(self, job_id: uuid.UUID, key: str) -> None: ...

    async def state(self, key: str) -> str: ...

    async def close(self) -> None: ...


class ArqJobQueue:
    """Enqueues processing jobs for the arq workers, one arq job per :func:`~services.common.records.queue_key`."""

    def __init__(self, pool: ArqRedis) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, redis_url: str) -> ArqJobQueue:
        return cls(await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=QUEUE_NAME))

    async def enqueue(self, job_id: uuid.UUID, key: str) -> None:
        await self._pool.enqueue_job(PROCESS_VIDEO, str(job_id), _job_id=key)

    async def state(self, key: str) -> str:
        """``queued``, ``deferred`` (waiting for a retry), ``in_progress``, ``complete`` or ``not_found``."""
        return str((await ArqJob(key, self._pool, _queue_name=QUEUE_NAME).status()).value)

    async def close(self) -> None:
        await self._pool.aclose()


async def enqueue_or_leave_to_sweep(queue: JobQueue, job_id: uuid.UUID, key: str, *, timeout_s: float = 5.0) -> bool:
    """Enqueue a job whose row is already committed; when Redis cannot take it now, log and return False.

    The job stays QUEUED in the database and the worker's sweep (``JobControl.requeue_lost``) enqueues it
    once Redis is back, so a caller never fails a request whose data is already stored."""
    try:
        await asyncio.wait_for(queue.enqueue(job_id, key), timeout_s)
        return True
    except (TimeoutError, RedisError, OSError) as exc:
        log.warning("job %s could not be enqueued now (%s: %s); the worker's sweep will enqueue it",
                    job_id, type(exc).__name__, exc)
        return False


def progress_channel(job_id: uuid.UUID) -> str:
    return f"clipmind:job:{job_id}"


class ProgressBus:
    """Publishes "job changed" notices; watchers wake on them and read events from Postgres."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @classmethod
    def connect(cls, redis_url: str) -> ProgressBus:
        return cls(aioredis.from_url(redis_url))

    async def publish(self, job_id: uuid.UUID, sequence: int) -> None:
        await self._redis.publish(progress_channel(job_id), json.dumps({"sequence": sequence}))

    async def publish_best_effort(self, job_id: uuid.UUID, sequence: int) -> None:
        """A lost notice only delays watchers (they also poll Postgres), so Redis trouble is logged, not raised."""
        try:
            await self.publish(job_id, sequence)
        except Exception as exc:
            log.warning("progress notice for job %s not published: %s", job_id, exc)

    @asynccontextmanager
    async def subscribe(self, job_id: uuid.UUID) -> AsyncIterator[aioredis.client.PubSub]:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(progress_channel(job_id))
        try:
            yield pubsub
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    async def close(self) -> None:
        await self._redis.aclose()
