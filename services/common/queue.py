"""Redis adapter of the arq job queue that feeds workers (job progress notices: ``services.common.progress``).

Priorities (high, standard, batch) live inside arq's queue, a Redis sorted set that workers take from lowest
score first among the entries already due: an entry of a more urgent priority is enqueued with its score moved
back by its priority's *lead* (``QueueRoutes.leads_s``: an hour for high, ten minutes for standard, none for
batch, by default). So a high job enqueued now is taken before any standard or batch job, and a standard one
before any batch job enqueued in the last ten minutes — but a batch job that has waited longer than that comes
before standard work arriving now: work of every priority moves (aging; no priority starves another). Why not a
queue per priority polled in turn: one arq worker polls one sorted set (its in-progress, retry and result keys
are per queue), so a worker taking from several would have to re-implement arq's job loop. Retries keep their
backoff: a deferred entry's score is when it falls due, without a lead.

Deployments that want pools apart route priorities to queues of their own (``CLIPMIND_QUEUE_HIGH``,
``..._STANDARD``, ``..._BATCH``: all ``clipmind:queue:default`` by default) and start workers on each
(``CLIPMIND_WORKER_QUEUE``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job as ArqJob
from arq.worker import Worker
from redis.exceptions import RedisError

from services.common import tracing

__all__ = ["PENDING_STATES", "PRIORITIES", "TRACE_KWARG", "ArqJobQueue", "JobQueue", "PriorityWorker", "QueueRoutes",
           "enqueue_or_leave_to_sweep", "queue_key", "trace_kwargs"]

log = logging.getLogger(__name__)


def queue_key(job_id: uuid.UUID, generation: int = 0) -> str:
    """The queue (arq job) id of one enqueue of a job: ``<job id>:<generation>``. The queue runs one entry
    per id, so the same key enqueued twice runs once; a retry or a re-queue takes a new generation."""
    return f"{job_id}:{generation}"

PROCESS_VIDEO = "process_video"
QUEUE_NAME = "clipmind:queue:default"  # the one queue every priority goes to unless routed elsewhere
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 5.0


# Answers of JobQueue.state: the entry waits, runs, or is gone (never enqueued, lost, or its result expired).
PENDING_STATES = frozenset({"queued", "deferred", "in_progress"})
# Job priorities, most urgent first (stored as these names; ``clipmind.type.v1.Priority`` without its prefix).
PRIORITIES = ("HIGH", "STANDARD", "BATCH")
DEFAULT_PRIORITY = "STANDARD"


@dataclass(frozen=True)
class QueueRoutes:
    """Where each priority's entries go (a queue name) and how far ahead of batch work they are ordered."""

    queues: Mapping[str, str] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, QUEUE_NAME))
    leads_s: Mapping[str, float] = field(default_factory=lambda: {"HIGH": 3600.0, "STANDARD": 600.0, "BATCH": 0.0})

    @classmethod
    def of(cls, settings: Any) -> QueueRoutes:
        """From the queue settings (``CommonSettings.queue_high`` ... ``priority_standard_lead_s``)."""
        return cls({"HIGH": settings.queue_high, "STANDARD": settings.queue_standard, "BATCH": settings.queue_batch},
                   {"HIGH": settings.priority_high_lead_s, "STANDARD": settings.priority_standard_lead_s,
                    "BATCH": 0.0})

    def queue(self, priority: str) -> str:
        return self.queues[priority if priority in self.queues else DEFAULT_PRIORITY]

    def lead_s(self, priority: str) -> float:
        return float(self.leads_s.get(priority, 0.0))

    def names(self) -> list[str]:
        """Every queue some priority goes to, in the order of the priorities."""
        return list(dict.fromkeys(self.queue(p) for p in PRIORITIES))


class JobQueue(Protocol):
    async def enqueue(self, job_id: uuid.UUID, key: str, *, defer_s: float = 0.0,
                      priority: str = DEFAULT_PRIORITY) -> None: ...

    async def state(self, key: str, *, priority: str = DEFAULT_PRIORITY) -> str: ...

    async def queues(self) -> list[tuple[str, list[str], int]]: ...

    async def close(self) -> None: ...


class ArqJobQueue:
    """Enqueues processing jobs for the arq workers, one arq job per :func:`queue_key`, into the queue of the job's
    priority, ordered by it (see the module doc)."""

    def __init__(self, pool: ArqRedis, routes: QueueRoutes | None = None) -> None:
        self._pool = pool
        self.routes = routes or QueueRoutes()

    @classmethod
    async def connect(cls, redis_url: str, routes: QueueRoutes | None = None) -> ArqJobQueue:
        """A queue client that never blocks a caller for long: no connection is made until used, and every
        command has connect and read timeouts, so a Redis outage fails calls quickly (the callers leave the
        job to the sweep) and the client reconnects by itself once Redis is back."""
        return cls(arq_redis(redis_url), routes)

    async def enqueue(self, job_id: uuid.UUID, key: str, *, defer_s: float = 0.0,
                      priority: str = DEFAULT_PRIORITY) -> None:
        """Enqueue ``key``: due after ``defer_s`` (a retry's backoff), else at once and ordered ahead of less urgent
        work by the priority's lead (the entry's score is that far in the past)."""
        when: dict[str, Any] = (
            {"_defer_by": defer_s} if defer_s > 0
            else {"_defer_until": datetime.fromtimestamp(time.time() - self.routes.lead_s(priority), UTC)})
        await self._pool.enqueue_job(PROCESS_VIDEO, str(job_id), _job_id=key, _queue_name=self.routes.queue(priority),
                                     **when, **trace_kwargs())

    async def state(self, key: str, *, priority: str = DEFAULT_PRIORITY) -> str:
        """``queued``, ``deferred`` (waiting for a retry), ``in_progress``, ``complete`` or ``not_found``."""
        return str((await ArqJob(key, self._pool, _queue_name=self.routes.queue(priority)).status()).value)

    async def queues(self) -> list[tuple[str, list[str], int]]:
        """Every routed queue: (name, the priorities routed to it, entries waiting in it: queued and deferred)."""
        return [(name, [p for p in PRIORITIES if self.routes.queue(p) == name], int(await self._pool.zcard(name)))
                for name in self.routes.names()]

    async def close(self) -> None:
        await self._pool.aclose()


class PriorityWorker(Worker):
    """arq's worker, taking entries strictly in the queue's order at every free slot.

    arq reads up to ``queue_read_limit`` due entries at once and then waits for a free slot before each of them in
    turn, so a worker behind a backlog keeps the order it read for up to that many entries: a high-priority job
    enqueued meanwhile would wait behind them. This one starts only what fits in its free slots now and reads the
    queue again at the next poll (entries running elsewhere, which stay in the sorted set, are skipped without
    using a slot, as arq does)."""

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            if self.sem.locked():  # no free slot: what comes next is decided at the next read
                return
            await super().start_jobs([job_id])


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
    queue: JobQueue, job_id: uuid.UUID, key: str, *, timeout_s: float = 5.0, defer_s: float = 0.0,
    priority: str = DEFAULT_PRIORITY,
) -> bool:
    """Enqueue a job whose row is already committed; when Redis cannot take it now, log and return False.

    The job stays QUEUED in the database and the worker's sweep (``JobControl.requeue_lost``) enqueues it
    once Redis is back, so a caller never fails a request whose data is already stored."""
    try:
        await asyncio.wait_for(queue.enqueue(job_id, key, defer_s=defer_s, priority=priority), timeout_s)
        return True
    except (TimeoutError, RedisError, OSError) as exc:
        log.warning("job %s could not be enqueued now (%s: %s); the worker's sweep will enqueue it",
                    job_id, type(exc).__name__, exc)
        return False
