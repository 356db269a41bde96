"""Job control: the one owner of the job state machine that callers address. Reading jobs and dead letters,
cancel, retry, and the sweeps that re-queue lost queue entries and take over dead runs (following progress is
``watch``; running an attempt is ``runs``).

Every operation a caller asks for takes that caller (a ``Principal``) and passes its ``scope`` to the store,
which filters by owner inside its queries: a user reads and changes only their own jobs, an administrator (and
the system) every job, and another user's job is NOT_FOUND exactly like a missing one. Submitting and deleting
a video's jobs, and the sweeps, are the system's (ingest and the worker call them), so they take no caller."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from services.common.errors import FailedPrecondition
from services.common.ids import job_id_for
from services.common.principal import Principal
from services.common.progress import ProgressBus
from services.common.queue import (
    DEFAULT_PRIORITY,
    PENDING_STATES,
    PRIORITIES,
    JobQueue,
    enqueue_or_leave_to_sweep,
    queue_key,
)
from services.pipeline.ports import Jobs
from services.pipeline.records import DeadLetter, Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueFigures:
    name: str
    priorities: list[str]
    depth: int


@dataclass(frozen=True)
class QueueStats:
    queues: list[QueueFigures]
    jobs: list[tuple[str, tuple[int, int]]]  # (priority, (queued, running)), most urgent first


class JobControl:
    def __init__(self, jobs: Jobs, bus: ProgressBus, queue: JobQueue, *, max_attempts: int = 3) -> None:
        self._jobs = jobs
        self._bus = bus
        self._queue = queue
        self._max_attempts = max_attempts

    async def submit(self, video_id: uuid.UUID, generation: int, owner_id: uuid.UUID,
                     priority: str = DEFAULT_PRIORITY) -> tuple[Job, bool]:
        """The processing job of ``owner_id``'s stored video's ``generation``, made and enqueued at ``priority``
        unless it exists (a repeated submission answers with the first job, keyed by video and generation).
        Returns (job, created)."""
        job_id = job_id_for(video_id, generation)
        created = await self._jobs.create(Job(
            job_id, video_id, "QUEUED", max_attempts=self._max_attempts, queue_key=queue_key(job_id),
            owner_id=owner_id, priority=priority,
        ))
        job = await self._jobs.get(job_id, scope=None)
        if created:  # a queue entry Redis cannot take now is enqueued by the sweep
            await enqueue_or_leave_to_sweep(self._queue, job.id, job.queue_key, priority=job.priority)
        return job, created

    async def get(self, caller: Principal, job_id: uuid.UUID) -> Job:
        """The job, if ``caller`` may see it; NOT_FOUND otherwise (whether it exists or not)."""
        return await self._jobs.get(job_id, scope=caller.scope)

    async def list_jobs(
        self, caller: Principal, *, limit: int, after: tuple[datetime, uuid.UUID] | None,
        video_id: uuid.UUID | None = None, state: str | None = None,
    ) -> list[Job]:
        """A page of the jobs ``caller`` may see, newest first (another user's video filter finds none)."""
        return await self._jobs.list_page(scope=caller.scope, limit=limit, after=after, video_id=video_id,
                                          state=state)

    async def dead_letters(
        self, caller: Principal, *, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[DeadLetter]:
        """A page of the dead letters of jobs ``caller`` may see, newest first."""
        return await self._jobs.dead_letters(scope=caller.scope, limit=limit, after=after)

    async def cancel(self, caller: Principal, job_id: uuid.UUID) -> Job:
        """Cancel a job of ``caller``'s that has not ended; its video becomes FAILED ("processing cancelled")
        unless READY."""
        return await self._cancel(job_id, scope=caller.scope)

    async def _cancel(self, job_id: uuid.UUID, *, scope: uuid.UUID | None) -> Job:
        event = await self._jobs.cancel(job_id, scope=scope)
        await self._bus.publish_best_effort(job_id, event.sequence)
        return await self._jobs.get(job_id, scope=scope)

    async def delete_video_jobs(self, video_id: uuid.UUID) -> int:
        """Remove a deleted video's jobs; a running one is cancelled first, so its worker stops (its guard
        sees the run gone within a second). Returns how many were removed."""
        for job in await self._jobs.list_page(scope=None, limit=1000, after=None, video_id=video_id):
            if not job.terminal:
                try:
                    await self._cancel(job.id, scope=None)
                except FailedPrecondition:
                    pass  # it ended meanwhile
        return await self._jobs.delete_for_video(video_id)

    async def retry(self, caller: Principal, job_id: uuid.UUID, priority: str | None = None) -> Job:
        """Queue a FAILED or CANCELLED job of ``caller``'s again, as a fresh set of attempts (attempt 1 next; its
        dead letter goes), at ``priority`` (None: the job's own)."""
        job = await self._jobs.reset_for_retry(job_id, queue_key(job_id, time.time_ns()), scope=caller.scope,
                                               priority=priority)
        event = await self._jobs.record_event(
            job_id, stage=job.stage, stage_state="STARTED", progress=0.0, message="retry requested",
            job_state="QUEUED",
        )
        await enqueue_or_leave_to_sweep(self._queue, job_id, job.queue_key, priority=job.priority)
        await self._bus.publish_best_effort(job_id, event.sequence)
        return await self._jobs.get(job_id, scope=caller.scope)

    async def purge_dead_letters(self, *, older_than_s: float) -> int:
        """Delete dead letters older than ``older_than_s`` (the sweep; their jobs stay FAILED)."""
        purged = await self._jobs.purge_dead_letters(older_than_s=older_than_s)
        if purged:
            log.info("purged %d dead letter(s) older than %.0f days", purged, older_than_s / 86400)
        return purged

    async def queue_stats(self) -> QueueStats:
        """The work queues' depths (Redis) and the waiting and running jobs per priority (the job store)."""
        queues = [QueueFigures(name, priorities, depth) for name, priorities, depth in await self._queue.queues()]
        waiting = await self._jobs.waiting_by_priority()
        return QueueStats(queues, [(p, waiting.get(p, (0, 0))) for p in PRIORITIES])

    async def requeue_lost(self, *, idle_s: float) -> list[uuid.UUID]:
        """Enqueue again every queued job, idle for ``idle_s``, whose queue entry is gone.

        The database is the record of what must run; the queue can lose entries (Redis unreachable when
        a job was created or retried, or restarted without its data). An entry still queued or deferred
        is left alone, so a long backlog is never run twice. (Running jobs are the lease's business:
        ``take_over_expired``.) Returns the jobs re-queued."""
        requeued = []
        for job in await self._jobs.pending(idle_s=idle_s):
            old_key = job.queue_key or queue_key(job.id)
            state = await self._queue.state(old_key, priority=job.priority)
            if state in PENDING_STATES:
                continue
            new_key = queue_key(job.id, time.time_ns())
            event = await self._jobs.requeue(
                job.id, expected_key=job.queue_key, new_key=new_key,
                message=f"re-queued: its queue entry {old_key} was {state.replace('_', ' ')} while the job was "
                        f"{job.state}",
            )
            if event is None:  # ended, retried, re-queued or started meanwhile
                continue
            log.warning("job %s was %s but its queue entry %s is %s: enqueued again as %s",
                        job.id, job.state, old_key, state, new_key)
            await self._queue.enqueue(job.id, new_key, priority=job.priority)
            await self._bus.publish_best_effort(job.id, event.sequence)
            requeued.append(job.id)
        return requeued

    async def take_over_expired(self, *, idle_s: float) -> list[uuid.UUID]:
        """Take over every running job whose run lost its lease (its worker died or hung): the attempt counts
        as failed (``WORKER_LOST``); the next one is queued at once — the lease already cost its TTL — or,
        after the last attempt, the job fails with a dead letter and is never queued again. Returns the jobs
        taken over (dead-lettered ones included)."""
        taken = []
        for job in await self._jobs.expired_runs(idle_s=idle_s):
            new_key = queue_key(job.id, time.time_ns())
            outcome = await self._jobs.take_over(job, new_key=new_key)
            if outcome is None:  # renewed, ended or taken by another sweep meanwhile
                continue
            event, final = outcome
            log.warning("job %s lost its worker (%s) during %s, attempt %d of %d: %s", job.id, job.worker or "?",
                        job.stage, job.attempt, job.max_attempts, "dead-lettered" if final else "taken over")
            if not final:
                await enqueue_or_leave_to_sweep(self._queue, job.id, new_key, priority=job.priority)
            await self._bus.publish_best_effort(job.id, event.sequence)
            taken.append(job.id)
        return taken
