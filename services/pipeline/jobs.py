"""Jobs as the PipelineService sees them: follow progress, cancel, retry, dead letters."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

from services.common.errors import FailedPrecondition
from services.common.job_store import JobStore
from services.common.queue import PENDING_STATES, JobQueue, ProgressBus, enqueue_or_leave_to_sweep
from services.common.records import Job, JobEvent, queue_key

log = logging.getLogger(__name__)


class JobControl:
    def __init__(self, jobs: JobStore, bus: ProgressBus, queue: JobQueue, *, poll_s: float = 2.0) -> None:
        self._jobs = jobs
        self._bus = bus
        self._queue = queue
        self._poll_s = poll_s

    async def watch(self, job_id: uuid.UUID, after_sequence: int = 0) -> AsyncIterator[JobEvent]:
        """Events after ``after_sequence`` in order, live, until one that ends the job.

        Postgres is the source of truth; Redis notices only wake the loop early, and a slow poll
        covers a notice lost in transit."""
        job = await self._jobs.get(job_id)
        last = after_sequence
        async with self._bus.subscribe(job_id) as pubsub:
            while True:
                for event in await self._jobs.events(job_id, last):
                    yield event
                    last = event.sequence
                # Ended only if the job row says so *and* no event came after: a retried job has old
                # terminal events followed by new ones.
                job = await self._jobs.get(job_id)
                if job.terminal and not await self._jobs.events(job_id, last):
                    return
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._poll_s)

    async def cancel(self, job_id: uuid.UUID) -> Job:
        job = await self._jobs.get(job_id)
        if job.terminal:
            raise FailedPrecondition(f"job is already {job.state}", reason="JOB_ALREADY_FINISHED")
        try:
            event = await self._jobs.record_event(
                job_id, stage=None, stage_state="FAILED", progress=None,
                message="cancelled on request", job_state="CANCELLED", failure_reason="cancelled on request",
            )
        except FailedPrecondition as exc:  # it ended between the check above and the lock
            raise FailedPrecondition(f"job is already {(await self._jobs.get(job_id)).state}",
                                     reason="JOB_ALREADY_FINISHED") from exc
        await self._jobs.mark_video_cancelled(job.video_id)
        await self._bus.publish_best_effort(job_id, event.sequence)
        return await self._jobs.get(job_id)

    async def retry(self, job_id: uuid.UUID) -> Job:
        job = await self._jobs.reset_for_retry(job_id, queue_key(job_id, time.time_ns()))
        event = await self._jobs.record_event(
            job_id, stage=job.stage, stage_state="STARTED", progress=0.0, message="retry requested",
            job_state="QUEUED",
        )
        await enqueue_or_leave_to_sweep(self._queue, job_id, job.queue_key)
        await self._bus.publish_best_effort(job_id, event.sequence)
        return await self._jobs.get(job_id)

    async def requeue_lost(self, *, idle_s: float) -> list[uuid.UUID]:
        """Enqueue again every queued or running job, idle for ``idle_s``, whose queue entry is gone.

        The database is the record of what must run; the queue can lose entries (Redis unreachable when
        a job was created or retried, or restarted without its data). An entry still queued, deferred or
        running is left alone, so a long backlog or a long stage is never run twice. Returns the jobs
        re-queued."""
        requeued = []
        for job in await self._jobs.pending(idle_s=idle_s):
            old_key = job.queue_key or queue_key(job.id)
            state = await self._queue.state(old_key)
            if state in PENDING_STATES:
                continue
            new_key = queue_key(job.id, time.time_ns())
            event = await self._jobs.requeue(
                job.id, expected_key=job.queue_key, new_key=new_key,
                message=f"re-queued: its queue entry {old_key} was {state.replace('_', ' ')} while the job was "
                        f"{job.state}",
            )
            if event is None:  # ended, retried or re-queued meanwhile
                continue
            log.warning("job %s was %s but its queue entry %s is %s: enqueued again as %s",
                        job.id, job.state, old_key, state, new_key)
            await self._queue.enqueue(job.id, new_key)
            await self._bus.publish_best_effort(job.id, event.sequence)
            requeued.append(job.id)
        return requeued
