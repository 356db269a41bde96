"""Redis adapters: the arq job queue that feeds workers, and the pub/sub channel of job progress."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

log = logging.getLogger(__name__)

PROCESS_VIDEO = "process_video"
QUEUE_NAME = "clipmind:queue:default"


class JobQueue(Protocol):
    async def enqueue(self, job_id: uuid.UUID, *, generation: int = 0) -> None: ...

    async def close(self) -> None: ...


class ArqJobQueue:
    """Enqueues processing jobs for the arq workers. One arq job id per (job, generation)."""

    def __init__(self, pool: ArqRedis) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, redis_url: str) -> ArqJobQueue:
        return cls(await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=QUEUE_NAME))

    async def enqueue(self, job_id: uuid.UUID, *, generation: int = 0) -> None:
        await self._pool.enqueue_job(PROCESS_VIDEO, str(job_id), _job_id=f"{job_id}:{generation}")

    async def close(self) -> None:
        await self._pool.aclose()


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
