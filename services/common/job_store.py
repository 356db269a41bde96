"""asyncpg repository for jobs, their ordered events and dead letters (the job state machine's storage)."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.common.errors import FailedPrecondition, NotFound
from services.common.records import TERMINAL_JOB_STATES, DeadLetter, Job, JobEvent
from services.common.store import newest_first, to_record


class JobStore:
    """Jobs, their ordered events and dead letters."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, job_id: uuid.UUID) -> Job:
        row = await self._pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        if row is None:
            raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND",
                           metadata={"name": f"jobs/{job_id}"})
        return to_record(Job, row)

    async def list_page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None,
        video_id: uuid.UUID | None = None, state: str | None = None,
    ) -> list[Job]:
        sql, args = newest_first("SELECT * FROM jobs", {"video_id": video_id, "state": state or None}, after, limit)
        return [to_record(Job, r) for r in await self._pool.fetch(sql, *args)]

    async def events(self, job_id: uuid.UUID, after_sequence: int = 0) -> list[JobEvent]:
        rows = await self._pool.fetch(
            "SELECT * FROM job_events WHERE job_id = $1 AND sequence > $2 ORDER BY sequence",
            job_id, after_sequence,
        )
        return [to_record(JobEvent, r) for r in rows]

    async def record_event(
        self, job_id: uuid.UUID, *, stage: str | None, stage_state: str, progress: float | None, message: str,
        job_state: str | None = None, attempt: int | None = None, failure_reason: str | None = None,
    ) -> JobEvent:
        """Append the next event and update the job row to match, in one transaction.

        A job that has already ended (cancelled, failed, succeeded) takes no further events: that raises
        FAILED_PRECONDITION ``JOB_ALREADY_FINISHED``, which is how a running worker learns of a cancel.
        ``stage``/``progress`` of None keep the job's current ones."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await self._lock_job(conn, job_id)
            if job["state"] in TERMINAL_JOB_STATES:
                raise FailedPrecondition(f"job is already {job['state']}", reason="JOB_ALREADY_FINISHED")
            return await self._append_event(
                conn, job, stage=stage, stage_state=stage_state, progress=progress, message=message,
                job_state=job_state, attempt=attempt, failure_reason=failure_reason,
            )

    async def pending(self, *, idle_s: float, limit: int = 500) -> list[Job]:
        """Queued or running jobs whose row has not changed for ``idle_s`` seconds, the longest idle first."""
        rows = await self._pool.fetch(
            "SELECT * FROM jobs WHERE state IN ('QUEUED', 'RUNNING') "
            "AND update_time < now() - make_interval(secs => $1) ORDER BY update_time LIMIT $2",
            idle_s, limit,
        )
        return [to_record(Job, r) for r in rows]

    async def requeue(self, job_id: uuid.UUID, *, expected_key: str, new_key: str, message: str) -> JobEvent | None:
        """Move a job whose queue entry ``expected_key`` was lost to ``new_key`` (QUEUED, with an event).

        None, changing nothing, when the job has ended or another sweep or a retry already moved it."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await self._lock_job(conn, job_id)
            if job["state"] in TERMINAL_JOB_STATES or job["queue_key"] != expected_key:
                return None
            await conn.execute("UPDATE jobs SET queue_key = $2 WHERE id = $1", job_id, new_key)
            return await self._append_event(
                conn, job, stage=None, stage_state="STARTED", progress=None, message=message, job_state="QUEUED",
            )

    @staticmethod
    async def _lock_job(conn: asyncpg.Connection, job_id: uuid.UUID) -> asyncpg.Record:
        job = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1 FOR UPDATE", job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")
        return job

    @staticmethod
    async def _append_event(
        conn: asyncpg.Connection, job: asyncpg.Record, *, stage: str | None, stage_state: str,
        progress: float | None, message: str, job_state: str | None = None, attempt: int | None = None,
        failure_reason: str | None = None,
    ) -> JobEvent:
        job_id = job["id"]
        state = job_state or job["state"]
        stage = stage or job["stage"]
        progress = job["progress"] if progress is None else progress
        seq = await conn.fetchval("SELECT coalesce(max(sequence), 0) + 1 FROM job_events WHERE job_id = $1", job_id)
        row = await conn.fetchrow(
            "INSERT INTO job_events (job_id, sequence, stage, stage_state, progress, message, job_state)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            job_id, seq, stage, stage_state, progress, message, state,
        )
        await conn.execute(
            """UPDATE jobs SET state = $2, stage = $3, progress = $4, update_time = now(),
                   attempt = coalesce($5, attempt),
                   failure_reason = coalesce($6, failure_reason),
                   start_time = CASE WHEN $2 = 'RUNNING' AND start_time IS NULL THEN now()
                                     ELSE start_time END,
                   end_time = CASE WHEN $2 IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN now()
                                   ELSE NULL END
               WHERE id = $1""",
            job_id, state, stage, progress, attempt, failure_reason,
        )
        return to_record(JobEvent, row)

    async def reset_for_retry(self, job_id: uuid.UUID, new_key: str) -> Job:
        """A failed or cancelled job back to QUEUED under the queue entry ``new_key``."""
        row = await self._pool.fetchrow(
            "UPDATE jobs SET state = 'QUEUED', attempt = 0, failure_reason = '', end_time = NULL, "
            "queue_key = $2, update_time = now() WHERE id = $1 AND state IN ('FAILED', 'CANCELLED') RETURNING *",
            job_id, new_key,
        )
        if row is None:
            job = await self.get(job_id)
            raise FailedPrecondition(
                f"job {job_id} is {job.state}; only FAILED or CANCELLED jobs can be retried",
                reason="JOB_NOT_RETRYABLE",
            )
        await self._pool.execute("DELETE FROM dead_letters WHERE job_id = $1", job_id)
        return to_record(Job, row)

    async def mark_video_cancelled(self, video_id: uuid.UUID) -> None:
        """A cancelled job leaves its video FAILED ("processing cancelled") unless it was already READY."""
        await self._pool.execute(
            "UPDATE videos SET state = 'FAILED', failure_reason = 'processing cancelled', update_time = now() "
            "WHERE id = $1 AND state IN ('PENDING', 'PROCESSING')",
            video_id,
        )

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self._pool.execute(
            "INSERT INTO dead_letters (id, job_id, video_id, failure_reason, attempts) "
            "VALUES ($1, $2, $3, $4, $5)",
            letter.id, letter.job_id, letter.video_id, letter.failure_reason, letter.attempts,
        )

    async def dead_letters(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[DeadLetter]:
        sql, args = newest_first("SELECT * FROM dead_letters", {}, after, limit)
        return [to_record(DeadLetter, r) for r in await self._pool.fetch(sql, *args)]
