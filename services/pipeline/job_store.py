"""asyncpg repository for jobs, their ordered events and dead letters (the job state machine's storage), in the
pipeline's schema (migrations beside this file).

A job change that ingest must learn of without a run to tell it (the job failed for good, or was cancelled)
commits its ``UpdateVideoProcessing`` request to the pipeline's outbox in the same transaction
(``services.pipeline.ingest_client``); ``on_fact`` is awaited with the outbox row's id after such a commit
(the composition root wakes the relay and waits briefly for the delivery). Every run's end, however it ends,
commits the worker time it took as the owner's usage (``services.common.usage_events``, delivered to analytics).

Ownership: every method that serves a caller's request takes ``scope``, the ``Principal.scope`` of that caller
(a user's id, or None for administrators and the system), and filters by it inside its SQL, so a user's query
never reads another user's rows. A job outside the scope is NOT_FOUND exactly as a job that does not exist is,
so its existence does not leak. Events and dead letters are scoped through their job (joined on its id).
Methods a run or a sweep calls (claim, heartbeat, end_run, ...) act as the system and take no scope.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import asyncpg

from services.common import outbox, usage_events
from services.common.db import Database
from services.common.errors import FailedPrecondition, NotFound
from services.common.metrics import DEAD_LETTERS
from services.common.names import job_name
from services.common.queue import queue_key
from services.common.rows import newest_first, to_record
from services.pipeline.ingest_client import VIDEO_PROCESSING_TOPIC, processing_request
from services.pipeline.records import TERMINAL_JOB_STATES, AttemptFailure, DeadLetter, Job, JobEvent

SCHEMA = "pipeline"
MIGRATIONS = Path(__file__).parent / "migrations"


def _job_not_found(job_id: uuid.UUID) -> NotFound:
    """The one answer for a job that does not exist and for another user's job (the same code, reason, text and
    metadata), so a caller cannot tell them apart."""
    return NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND", metadata={"name": job_name(job_id)})


def _check_owner(job: asyncpg.Record, run_id: uuid.UUID) -> None:
    """A run's write goes through only while that run owns the job (its fencing token is the job's)."""
    if job["state"] != "RUNNING" or job["run_id"] != run_id:
        raise FailedPrecondition("this run no longer owns the job (cancelled or taken over)",
                                 reason="RUN_SUPERSEDED")


class JobStore:
    """Jobs, their ordered events and dead letters."""

    def __init__(self, pool: Database, *, on_fact: Callable[[int], Awaitable[object]] | None = None) -> None:
        self._pool = pool
        self._on_fact = on_fact

    async def get(self, job_id: uuid.UUID, *, scope: uuid.UUID | None) -> Job:
        """The job, if ``scope`` (an owner, or None for every owner) may see it; NOT_FOUND otherwise."""
        row = await self._pool.fetchrow(
            "SELECT * FROM jobs WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)", job_id, scope)
        if row is None:
            raise _job_not_found(job_id)
        return to_record(Job, row)

    async def create(self, job: Job) -> bool:
        """Insert a QUEUED job unless one with its id exists (ids are derived from video and generation, so
        a repeated submission finds the first, with the owner it was made with). True when this call made it."""
        row = await self._pool.fetchrow(
            "INSERT INTO jobs (id, video_id, state, max_attempts, queue_key, owner_id, priority) "
            "VALUES ($1, $2, 'QUEUED', $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING RETURNING id",
            job.id, job.video_id, job.max_attempts, job.queue_key or queue_key(job.id), job.owner_id, job.priority,
        )
        return row is not None

    async def delete_for_video(self, video_id: uuid.UUID) -> int:
        """Delete every job of a video (events and dead letters go with them); returns how many."""
        status = await self._pool.execute("DELETE FROM jobs WHERE video_id = $1", video_id)
        return int(status.split()[-1])

    async def list_page(
        self, *, scope: uuid.UUID | None, limit: int, after: tuple[datetime, uuid.UUID] | None,
        video_id: uuid.UUID | None = None, state: str | None = None,
    ) -> list[Job]:
        """A page of the jobs ``scope`` owns (every job for None), newest first; the owner is a condition of the
        query (index ``jobs_owner_create_time_idx``), so another user's video filter simply finds nothing."""
        sql, args = newest_first(
            "SELECT * FROM jobs", {"owner_id": scope, "video_id": video_id, "state": state or None}, after, limit)
        return [to_record(Job, r) for r in await self._pool.fetch(sql, *args)]

    async def events(self, job_id: uuid.UUID, after_sequence: int = 0, *, scope: uuid.UUID | None) -> list[JobEvent]:
        """The job's events after ``after_sequence`` in order; none when ``scope`` does not own the job."""
        rows = await self._pool.fetch(
            "SELECT e.* FROM job_events e JOIN jobs j ON j.id = e.job_id "
            "WHERE e.job_id = $1 AND e.sequence > $2 AND ($3::uuid IS NULL OR j.owner_id = $3) ORDER BY e.sequence",
            job_id, after_sequence, scope,
        )
        return [to_record(JobEvent, r) for r in rows]

    async def record_event(
        self, job_id: uuid.UUID, *, stage: str | None, stage_state: str, progress: float | None, message: str,
        job_state: str | None = None, attempt: int | None = None, failure_reason: str | None = None,
        run_id: uuid.UUID | None = None,
    ) -> JobEvent:
        """Append the next event and update the job row to match, in one transaction.

        A job that has already ended (cancelled, failed, succeeded) takes no further events: that raises
        FAILED_PRECONDITION ``JOB_ALREADY_FINISHED``, which is how a running worker learns of a cancel.
        With ``run_id`` the event is a run's: it is written only while that run still owns the job
        (FAILED_PRECONDITION ``RUN_SUPERSEDED`` once it was cancelled or taken over).
        ``stage``/``progress`` of None keep the job's current ones."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await self._lock_job(conn, job_id, scope=None)
            if job["state"] in TERMINAL_JOB_STATES:
                raise FailedPrecondition(f"job is already {job['state']}", reason="JOB_ALREADY_FINISHED")
            if run_id is not None:
                _check_owner(job, run_id)
            return await self._append_event(
                conn, job, stage=stage, stage_state=stage_state, progress=progress, message=message,
                job_state=job_state, attempt=attempt, failure_reason=failure_reason,
            )

    async def cancel(
        self, job_id: uuid.UUID, *, scope: uuid.UUID | None, message: str = "cancelled on request"
    ) -> JobEvent:
        """Cancel a job that has not ended (FAILED_PRECONDITION ``JOB_ALREADY_FINISHED`` otherwise; NOT_FOUND when
        ``scope`` does not own it): its run, if any, loses the job (its guard stops it within a second), the fence
        moves on so nothing that run still sends is accepted, and ingest is told (its video is FAILED unless it
        was READY already)."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await self._lock_job(conn, job_id, scope=scope)
            if job["state"] in TERMINAL_JOB_STATES:
                raise FailedPrecondition(f"job is already {job['state']}", reason="JOB_ALREADY_FINISHED")
            fence = await conn.fetchval("UPDATE jobs SET fence = fence + 1 WHERE id = $1 RETURNING fence", job_id)
            event = await self._append_event(
                conn, job, stage=None, stage_state="FAILED", progress=None, message=message,
                job_state="CANCELLED", failure_reason=message,
            )
            fact = await self._tell_ingest(conn, job, fence, state="CANCELLED",
                                           failure_reason="processing cancelled")
        await self._told(fact)
        return event

    @staticmethod
    async def _tell_ingest(conn: asyncpg.Connection, job: asyncpg.Record, fence: int, **update: object) -> int | None:
        """Commit the update ingest must learn of a video job's end; None for a compilation's job (its state is the
        job's own: nothing to tell)."""
        if job["video_id"] is None:
            return None
        request = processing_request(job["video_id"], fence, **update)  # type: ignore[arg-type]
        return await outbox.add(conn, VIDEO_PROCESSING_TOPIC, request.SerializeToString())

    async def _told(self, fact: int | None) -> None:
        """After the commit of a transaction that wrote outbox row ``fact`` (None: it wrote none)."""
        if fact is not None and self._on_fact is not None:
            await self._on_fact(fact)

    # -- runs: claim, lease, end ---------------------------------------------------------------

    async def claim(
        self, job_id: uuid.UUID, *, queue_key: str, run_id: uuid.UUID, worker: str, lease_s: float
    ) -> tuple[Job, JobEvent] | None:
        """Start the next attempt of a QUEUED job enqueued under ``queue_key``: the run ``run_id`` owns it
        under a lease of ``lease_s``. None when the job is not there to take (ended, running elsewhere, or
        re-queued under another key since this queue entry was written)."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            if job is None or job["state"] != "QUEUED" or job["queue_key"] != queue_key:
                return None
            attempt = job["attempt"] + 1
            await conn.execute(
                "UPDATE jobs SET run_id = $2, worker = $3, lease_expire_time = now() + make_interval(secs => $4), "
                "fence = fence + 1, run_start_time = now() WHERE id = $1",
                job_id, run_id, worker, lease_s,
            )
            event = await self._append_event(
                conn, job, stage=None, stage_state="STARTED", progress=None,
                message=f"attempt {attempt} of {job['max_attempts']} started on {worker}", job_state="RUNNING",
                attempt=attempt,
            )
            claimed = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
            return to_record(Job, claimed), event

    async def heartbeat(self, job_id: uuid.UUID, run_id: uuid.UUID, lease_s: float) -> bool:
        """Extend the run's lease; False when the run no longer owns the job (cancelled, taken over)."""
        status = await self._pool.execute(
            "UPDATE jobs SET lease_expire_time = now() + make_interval(secs => $3) "
            "WHERE id = $1 AND run_id = $2 AND state = 'RUNNING'",
            job_id, run_id, lease_s,
        )
        return not status.endswith(" 0")

    async def owns(self, job_id: uuid.UUID, run_id: uuid.UUID) -> bool:
        """Whether the run still owns the job (one cheap read; the cancel check of a running stage)."""
        return bool(await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND run_id = $2 AND state = 'RUNNING')", job_id, run_id
        ))

    async def end_run(
        self, job_id: uuid.UUID, run_id: uuid.UUID, *, outcome: str, message: str, code: str = "",
        new_key: str = "", event_message: str | None = None,
    ) -> JobEvent | None:
        """End the run ``run_id``, which must still own the job. ``outcome``:

        - ``retry``: the attempt failed; the job is QUEUED again under ``new_key``.
        - ``fail``: the last attempt failed; the job and its video are FAILED and a dead letter says why.
        - ``handback``: the worker is stopping; the job is QUEUED again under ``new_key`` and the attempt is
          given back (it does not count).

        None, changing nothing, when the run no longer owns the job."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await self._lock_job(conn, job_id, scope=None)
            if job["state"] != "RUNNING" or job["run_id"] != run_id:
                return None
            event, fact = await self._end(conn, job, outcome=outcome, message=message, code=code,
                                          new_key=new_key, event_message=event_message)
        if outcome == "fail":  # committed: a dead letter was written
            DEAD_LETTERS.labels(code or "UNKNOWN").inc()
        await self._told(fact)
        return event

    async def expired_runs(self, *, idle_s: float, limit: int = 100) -> list[Job]:
        """RUNNING jobs whose run lost its lease: the worker died (or, for rows from before leases, a job
        unchanged for ``idle_s``)."""
        rows = await self._pool.fetch(
            "SELECT * FROM jobs WHERE state = 'RUNNING' AND (lease_expire_time < now() OR "
            "(lease_expire_time IS NULL AND update_time < now() - make_interval(secs => $1))) "
            "ORDER BY update_time LIMIT $2",
            idle_s, limit,
        )
        return [to_record(Job, r) for r in rows]

    async def take_over(self, job: Job, *, new_key: str) -> tuple[JobEvent, bool] | None:
        """The run of ``job`` (as read by ``expired_runs``) lost its worker: count the attempt as failed and
        queue the next one under ``new_key``, or, after the last attempt, fail the job with a dead letter.
        Returns (event, final), or None when the job changed meanwhile (the run came back, or another sweep
        took it)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._lock_job(conn, job.id, scope=None)
            expired = await conn.fetchval(
                "SELECT state = 'RUNNING' AND run_id IS NOT DISTINCT FROM $2 AND "
                "(lease_expire_time IS NULL OR lease_expire_time < now()) FROM jobs WHERE id = $1",
                job.id, job.run_id,
            )
            if not expired:
                return None
            final = row["attempt"] >= row["max_attempts"]
            worker = row["worker"] or "its worker"
            message = (f"{worker} stopped during {row['stage'].removeprefix('STAGE_')} "
                       f"(attempt {row['attempt']} of {row['max_attempts']})")
            event, fact = await self._end(
                conn, row, outcome="fail" if final else "retry", message=message, code="WORKER_LOST",
                new_key=new_key,
                event_message=None if final else f"WORKER_LOST: {message}; taken over as attempt {row['attempt'] + 1}",
            )
        if final:
            DEAD_LETTERS.labels("WORKER_LOST").inc()
        await self._told(fact)
        return event, final

    async def _end(
        self, conn: asyncpg.Connection, job: asyncpg.Record, *, outcome: str, message: str, code: str,
        new_key: str, event_message: str | None,
    ) -> tuple[JobEvent, int | None]:
        """(the event, the id of the outbox row telling ingest, if any)."""
        job_id = job["id"]
        reason = f"{code}: {message}" if code else message
        if outcome in ("fail", "retry"):  # a failed attempt: the dead letter's history
            await conn.execute(
                "INSERT INTO attempt_failures (job_id, attempt, failure_code, message, worker) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id, attempt) DO UPDATE SET failure_code = $3, "
                "message = $4, worker = $5, create_time = now()",
                job_id, job["attempt"], code, message, job["worker"])
        if outcome == "fail":
            fence = await conn.fetchval(
                "UPDATE jobs SET run_id = NULL, lease_expire_time = NULL, failure_code = $2, fence = fence + 1 "
                "WHERE id = $1 RETURNING fence",
                job_id, code,
            )
            event = await self._append_event(
                conn, job, stage=None, stage_state="FAILED", progress=None, message=event_message or reason,
                job_state="FAILED", failure_reason=reason,
            )
            fact = await self._tell_ingest(conn, job, fence, state="FAILED", failure_reason=reason)
            await conn.execute(
                "INSERT INTO dead_letters (id, job_id, video_id, failure_reason, attempts, failure_code) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                uuid.uuid4(), job_id, job["video_id"], reason, job["attempt"], code,
            )
            return event, fact
        if outcome not in ("retry", "handback"):
            raise ValueError(f"unknown run outcome {outcome!r}")
        await conn.execute(
            "UPDATE jobs SET run_id = NULL, lease_expire_time = NULL, queue_key = $2, "
            "attempt = attempt - $3, failure_code = $4 WHERE id = $1",
            job_id, new_key, 1 if outcome == "handback" else 0, code if outcome == "retry" else job["failure_code"],
        )
        if outcome == "handback":
            return await self._append_event(
                conn, job, stage=None, stage_state="STARTED", progress=None, message=event_message or message,
                job_state="QUEUED",
            ), None
        return await self._append_event(
            conn, job, stage=None, stage_state="FAILED", progress=None, message=event_message or reason,
            job_state="QUEUED", failure_reason=reason,
        ), None

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (the worker's ``clipmind_worker_jobs`` gauge); states with none are
        left out."""
        rows = await self._pool.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}

    async def waiting_by_priority(self) -> dict[str, tuple[int, int]]:
        """(queued, running) jobs per priority (GetQueueStats); priorities with none are left out."""
        rows = await self._pool.fetch(
            "SELECT priority, count(*) FILTER (WHERE state = 'QUEUED') AS queued, "
            "count(*) FILTER (WHERE state = 'RUNNING') AS running FROM jobs "
            "WHERE state IN ('QUEUED', 'RUNNING') GROUP BY priority")
        return {r["priority"]: (int(r["queued"]), int(r["running"])) for r in rows}

    async def oldest_run_age_s(self) -> float:
        """Seconds since the oldest running attempt was claimed (0 when none runs): the worker's
        ``clipmind_worker_oldest_run_seconds`` gauge."""
        return float(await self._pool.fetchval(
            "SELECT coalesce(extract(epoch FROM now() - min(run_start_time)), 0)::float8 FROM jobs "
            "WHERE state = 'RUNNING'"))

    async def pending(self, *, idle_s: float, limit: int = 500) -> list[Job]:
        """Queued jobs whose row has not changed for ``idle_s`` seconds, the longest idle first."""
        rows = await self._pool.fetch(
            "SELECT * FROM jobs WHERE state = 'QUEUED' "
            "AND update_time < now() - make_interval(secs => $1) ORDER BY update_time LIMIT $2",
            idle_s, limit,
        )
        return [to_record(Job, r) for r in rows]

    async def requeue(self, job_id: uuid.UUID, *, expected_key: str, new_key: str, message: str) -> JobEvent | None:
        """Move a job whose queue entry ``expected_key`` was lost to ``new_key`` (QUEUED, with an event).

        None, changing nothing, when the job has ended or another sweep or a retry already moved it."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await self._lock_job(conn, job_id, scope=None)
            if job["state"] != "QUEUED" or job["queue_key"] != expected_key:
                return None
            await conn.execute("UPDATE jobs SET queue_key = $2 WHERE id = $1", job_id, new_key)
            return await self._append_event(
                conn, job, stage=None, stage_state="STARTED", progress=None, message=message, job_state="QUEUED",
            )

    @staticmethod
    async def _lock_job(conn: asyncpg.Connection, job_id: uuid.UUID, *, scope: uuid.UUID | None) -> asyncpg.Record:
        """The job's row, locked for the transaction; NOT_FOUND when it is gone or ``scope`` does not own it."""
        job = await conn.fetchrow(
            "SELECT * FROM jobs WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2) FOR UPDATE", job_id, scope)
        if job is None:
            raise _job_not_found(job_id)
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
                   failure_code = CASE WHEN $2 = 'SUCCEEDED' THEN '' ELSE failure_code END,
                   run_id = CASE WHEN $2 = 'RUNNING' THEN run_id END,
                   lease_expire_time = CASE WHEN $2 = 'RUNNING' THEN lease_expire_time END,
                   failure_reason = coalesce($6, failure_reason),
                   start_time = CASE WHEN $2 = 'RUNNING' AND start_time IS NULL THEN now()
                                     ELSE start_time END,
                   end_time = CASE WHEN $2 IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN now()
                                   ELSE NULL END
               WHERE id = $1""",
            job_id, state, stage, progress, attempt, failure_reason,
        )
        if job["state"] == "RUNNING" and state != "RUNNING" and job["run_start_time"] is not None:
            await JobStore._run_ended(conn, job)
        return to_record(JobEvent, row)

    @staticmethod
    async def _run_ended(conn: asyncpg.Connection, job: asyncpg.Record) -> None:
        """The run of ``job`` (its row while it ran) ended: its worker time is its owner's usage. A run whose worker
        was lost counts up to its lease's end (at most one lease more than it worked)."""
        took = await conn.fetchval("SELECT extract(epoch FROM least(now(), coalesce($2, now())) - $1)::float8",
                                   job["run_start_time"], job["lease_expire_time"])
        await usage_events.add(conn, usage_events.PROCESSING_RUN, job["owner_id"], video_id=job["video_id"],
                               seconds=took)

    async def reset_for_retry(self, job_id: uuid.UUID, new_key: str, *, scope: uuid.UUID | None,
                              priority: str | None = None) -> Job:
        """A failed or cancelled job that ``scope`` owns back to QUEUED under the queue entry ``new_key``, at
        ``priority`` (None: its own) (NOT_FOUND when ``scope`` does not own it, FAILED_PRECONDITION
        ``JOB_NOT_RETRYABLE`` when it has not ended or succeeded)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE jobs SET state = 'QUEUED', attempt = 0, failure_reason = '', failure_code = '', "
                "end_time = NULL, queue_key = $2, update_time = now(), priority = coalesce($4, priority) "
                "WHERE id = $1 AND state IN ('FAILED', 'CANCELLED') AND ($3::uuid IS NULL OR owner_id = $3) "
                "RETURNING *",
                job_id, new_key, scope, priority,
            )
            if row is not None:  # a fresh set of attempts: the old ones' letter and history go
                await conn.execute("DELETE FROM dead_letters WHERE job_id = $1", job_id)
                await conn.execute("DELETE FROM attempt_failures WHERE job_id = $1", job_id)
        if row is None:
            job = await self.get(job_id, scope=scope)
            raise FailedPrecondition(
                f"job {job_id} is {job.state}; only FAILED or CANCELLED jobs can be retried",
                reason="JOB_NOT_RETRYABLE",
            )
        return to_record(Job, row)

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self._pool.execute(
            "INSERT INTO dead_letters (id, job_id, video_id, failure_reason, attempts) "
            "VALUES ($1, $2, $3, $4, $5)",
            letter.id, letter.job_id, letter.video_id, letter.failure_reason, letter.attempts,
        )

    async def dead_letters(
        self, *, scope: uuid.UUID | None, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[DeadLetter]:
        """A page of the dead letters of jobs ``scope`` owns (all for None), newest first; the owner is their
        job's, joined in the query."""
        sql, args = newest_first("SELECT d.* FROM dead_letters d JOIN jobs j ON j.id = d.job_id",
                                 {"j.owner_id": scope}, after, limit, alias="d.")
        letters = [to_record(DeadLetter, r) for r in await self._pool.fetch(sql, *args)]
        history: dict[uuid.UUID, list[AttemptFailure]] = {}
        for r in await self._pool.fetch(
                "SELECT * FROM attempt_failures WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, attempt",
                [d.job_id for d in letters]):
            history.setdefault(r["job_id"], []).append(to_record(AttemptFailure, r))
        for letter in letters:
            letter.history = history.get(letter.job_id, [])
        return letters

    async def purge_dead_letters(self, *, older_than_s: float) -> int:
        """Delete dead letters written more than ``older_than_s`` ago (their jobs stay FAILED); returns how many."""
        status = await self._pool.execute(
            "DELETE FROM dead_letters WHERE create_time < now() - make_interval(secs => $1)", older_than_s)
        return int(status.split()[-1])
