"""Redis adapter of the arq job queue that feeds workers (job progress notices: ``services.common.progress``)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, Protocol

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job as ArqJob
from redis.exceptions import RedisError

from services.common import tracing

__all__ = ["PENDING_STATES", "TRACE_KWARG", "ArqJobQueue", "JobQueue", "enqueue_or_leave_to_sweep", "queue_key",
           "trace_kwargs"]

log = logging.getLogger(__name__)


def queue_key(job_id: uuid.UUID, generation: int = 0) -> str:
    """The queue (arq job) id of one enqueue of a job: ``<job id>:<generation>``. The queue runs one entry
    per id, so the same key enqueued twice runs once; a retry or a re-queue takes a new generation."""
    return f"{job_id}:{generation}"

PROCESS_VIDEO = "process_video"
QUEUE_NAME = "clipmind:queue:default"
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 5.0


# Answers of JobQueue.state: the entry waits, runs, or is gone (never enqueued, lost, or its result expired).
PENDING_STATES = frozenset({"queued", "deferred", "in_progress"})


class JobQueue(Protocol):
    async def enqueue(self, job_id: uuid.UUID, key: str, *, defer_s: float = 0.0) -> None: ...

    async def state(self, key: str) -> str: ...

    async def close(self) -> None: ...


class ArqJobQueue:
    """Enqueues processing jobs for the arq workers, one arq job per :func:`queue_key`."""

    def __init__(self, pool: ArqRedis) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, redis_url: str) -> ArqJobQueue:
        """A queue client that never blocks a caller for long: no connection is made until used, and every
        command has connect and read timeouts, so a Redis outage fails calls quickly (the callers leave the
        job to the sweep) and the client reconnects by itself once Redis is back."""
        return cls(arq_redis(redis_url))

    async def enqueue(self, job_id: uuid.UUID, key: str, *, defer_s: float = 0.0) -> None:
        await self._pool.enqueue_job(PROCESS_VIDEO, str(job_id), _job_id=key, _defer_by=defer_s or None,
                                     **trace_kwargs())

    async def state(self, key: str) -> str:
        """``queued``, ``deferred`` (waiting for a retry), ``in_progress``, ``complete`` or ``not_found``."""
        return str((await ArqJob(key, self._pool, _queue_name=QUEUE_NAME).status()).value)

    async def close(self) -> None:
        await self._pool.aclose()


#: The job payload's keyword argument with the W3C trace context of the enqueuer (``{"traceparent": ...,
#: "tracestate": ...}``): the worker's ``job.run`` span continues that trace (``services.common.tracing``).
TRACE_KWARG = "trace"


def trace_kwargs() -> dict[str, Any]:
    """``{"trace": <the current W3C context>}`` for a job payload, or nothing when there is no context (the
    payload is then what it was before tracing: a worker that takes no ``trace`` runs it)."""
    carried = tracing.carrier()
    return {TRACE_KWARG: carried} if carried else {}


def job_to_json(data: Any) -> bytes:
    """arq's job and result records as JSON, never pickle: a payload written into Redis by anyone who reaches
    it must not run code in the worker when read (pickle would). Our jobs carry only ids and strings."""
    return json.dumps(data, separators=(",", ":")).encode()


def job_from_json(raw: bytes) -> Any:
    return json.loads(raw)


def arq_redis(redis_url: str) -> ArqRedis:
    """An arq Redis client with connect/read timeouts and health checks (arq's own ``create_pool`` sets no
    read timeout and pings at creation, which fails a process that starts while Redis is down)."""
    settings = RedisSettings.from_dsn(redis_url)
    client = ArqRedis(
        host=settings.host, port=settings.port, db=settings.database, username=settings.username,
        password=settings.password, ssl=settings.ssl, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S, health_check_interval=30, encoding="utf8",
        default_queue_name=QUEUE_NAME, job_serializer=job_to_json, job_deserializer=job_from_json,
    )
    return client


async def enqueue_or_leave_to_sweep(
    queue: JobQueue, job_id: uuid.UUID, key: str, *, timeout_s: float = 5.0, defer_s: float = 0.0
) -> bool:
    """Enqueue a job whose row is already committed; when Redis cannot take it now, log and return False.

    The job stays QUEUED in the database and the worker's sweep (``JobControl.requeue_lost``) enqueues it
    once Redis is back, so a caller never fails a request whose data is already stored."""
    try:
        await asyncio.wait_for(queue.enqueue(job_id, key, defer_s=defer_s), timeout_s)
        return True
    except (TimeoutError, RedisError, OSError) as exc:
        log.warning("job %s could not be enqueued now (%s: %s); the worker's sweep will enqueue it",
                    job_id, type(exc).__name__, exc)
        return False
