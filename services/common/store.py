"""asyncpg repositories for videos, uploads, jobs (+ events, dead letters) and clips.

These are adapters: SQL lives here and nowhere else, and they hand out the plain records of
``services.common.records``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any

import asyncpg

from services.common.errors import Aborted, FailedPrecondition, NotFound
from services.common.records import (
    TERMINAL_JOB_STATES,
    Clip,
    DeadLetter,
    Job,
    JobEvent,
    ProcessedVideo,
    Segment,
    Upload,
    Video,
    queue_key,
)
from services.common.vectors import PgVectorIndex, VectorItem

_VIDEO_COLUMNS = [f.name for f in fields(Video) if f.name != "job_id"]
_VIDEO_SELECT = (
    "SELECT v.*, (SELECT j.id FROM jobs j WHERE j.video_id = v.id "
    "ORDER BY j.create_time DESC LIMIT 1) AS job_id FROM videos v"
)


def _newest_first(
    select: str, equals: dict[str, Any], after: tuple[datetime, uuid.UUID] | None, limit: int, *, alias: str = ""
) -> tuple[str, list[Any]]:
    """``select`` newest first, keyset-paginated by (create_time, id) after ``after``, filtered by
    ``column = value`` for every value that is not None: the SQL and its arguments."""
    where: list[str] = []
    args: list[Any] = []
    if after is not None:
        args += [after[0], after[1]]
        where.append(f"({alias}create_time, {alias}id) < ($1, $2)")
    for column, value in equals.items():
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    args.append(limit)
    filters = f" WHERE {' AND '.join(where)}" if where else ""
    return (f"{select}{filters} ORDER BY {alias}create_time DESC, {alias}id DESC LIMIT ${len(args)}", args)


def _record(cls: Any, row: asyncpg.Record) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in dict(row).items() if k in names})


class VideoStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._vectors = PgVectorIndex(pool)  # vectors live in the same database: written in one transaction

    async def get(self, video_id: uuid.UUID) -> Video:
        row = await self._pool.fetchrow(f"{_VIDEO_SELECT} WHERE v.id = $1", video_id)
        if row is None:
            raise NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND",
                           metadata={"name": f"videos/{video_id}"})
        return _record(Video, row)

    async def list_page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None, state: str | None = None
    ) -> list[Video]:
        """Newest first, keyset-paginated by (create_time, id)."""
        sql, args = _newest_first(_VIDEO_SELECT, {"v.state": state or None}, after, limit, alias="v.")
        return [_record(Video, r) for r in await self._pool.fetch(sql, *args)]

    async def count(self, state: str | None = None) -> int:
        if state:
            return int(await self._pool.fetchval("SELECT count(*) FROM videos WHERE state = $1", state))
        return int(await self._pool.fetchval("SELECT count(*) FROM videos"))

    async def create_with_job(self, video: Video, job: Job, upload_id: uuid.UUID | None = None) -> None:
        """Insert the video row and its first job in one transaction (and close the upload)."""
        cols = [c for c in _VIDEO_COLUMNS if c not in ("create_time", "update_time")]
        values = [getattr(video, c) for c in cols]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO videos ({', '.join(cols)}) "
                f"VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
                *values,
            )
            await conn.execute(
                "INSERT INTO jobs (id, video_id, state, max_attempts, queue_key) VALUES ($1, $2, $3, $4, $5)",
                job.id, job.video_id, job.state, job.max_attempts, job.queue_key or queue_key(job.id),
            )
            if upload_id is not None:
                status = await conn.execute(
                    "UPDATE uploads SET state = 'COMPLETED', video_id = $2 WHERE id = $1 AND state = 'ACTIVE'",
                    upload_id, video.id,
                )
                if status.endswith(" 0"):  # completed or cancelled by another request meanwhile: roll back
                    raise FailedPrecondition("upload is no longer active", reason="UPLOAD_NOT_ACTIVE")

    async def update_fields(self, video_id: uuid.UUID, **values: Any) -> Video:
        if values:
            cols = list(values)
            sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(cols))
            status = await self._pool.execute(
                f"UPDATE videos SET {sets}, update_time = now() WHERE id = $1",
                video_id, *[values[c] for c in cols],
            )
            if status.endswith(" 0"):
                raise NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND")
        return await self.get(video_id)

    async def delete(self, video_id: uuid.UUID) -> Video:
        row = await self._pool.fetchrow("DELETE FROM videos WHERE id = $1 RETURNING *", video_id)
        if row is None:
            raise NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND")
        return _record(Video, row)

    async def save_processed(
        self, video_id: uuid.UUID, result: ProcessedVideo, job_id: uuid.UUID | None = None
    ) -> None:
        """Replace the video's clips, segments and vectors and mark it READY, atomically — unless the job
        writing them has ended meanwhile (a cancel): then nothing is written."""
        async with self._pool.acquire() as conn, conn.transaction():
            if job_id is not None:
                state = await conn.fetchval("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", job_id)
                if state is None or state in TERMINAL_JOB_STATES:
                    raise FailedPrecondition(f"job is already {state}", reason="JOB_ALREADY_FINISHED")
            locked = await conn.fetchval("SELECT id FROM videos WHERE id = $1 FOR UPDATE", video_id)
            if locked is None:
                raise NotFound(f"video {video_id} was deleted", reason="VIDEO_NOT_FOUND")
            await conn.execute("DELETE FROM clips WHERE video_id = $1", video_id)
            await conn.executemany(
                "INSERT INTO clips (id, video_id, idx, start_s, end_s, thumbnail_key) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                [(c.id, c.video_id, c.idx, c.start_s, c.end_s, c.thumbnail_key) for c in result.clips],
            )
            await conn.executemany(
                "INSERT INTO transcript_segments (id, video_id, clip_id, idx, start_s, end_s, text, source) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [(s.id, s.video_id, s.clip_id, s.idx, s.start_s, s.end_s, s.text, s.source)
                 for s in result.segments],
            )
            await self._vectors.upsert(
                "transcript", result.transcript_model,
                [VectorItem(seg_id, video_id, vec) for seg_id, vec in result.vectors], conn=conn,
            )
            await self._vectors.upsert(
                "visual", result.visual_model,
                [VectorItem(clip_id, video_id, vec) for clip_id, vec in result.visual_vectors], conn=conn,
            )
            await conn.execute(
                "UPDATE videos SET state = 'READY', scene_count = $2, transcript_source = $3, "
                "transcript_model = $4, visual_model = $5, failure_reason = '', update_time = now() "
                "WHERE id = $1",
                video_id, len(result.clips), result.transcript_source,
                result.transcript_model if result.vectors else "",
                result.visual_model if result.visual_vectors else "",
            )

    async def stale_models(self, transcript_model: str, visual_model: str) -> dict[str, int]:
        """READY videos whose vectors came from another model than the one in use (reindex needed),
        counted per "modality:model"."""
        rows = await self._pool.fetch(
            """SELECT 'transcript:' || transcript_model AS key, count(*) AS n FROM videos
                WHERE state = 'READY' AND transcript_model NOT IN ('', $1) GROUP BY transcript_model
               UNION ALL
               SELECT 'visual:' || visual_model, count(*) FROM videos
                WHERE state = 'READY' AND visual_model NOT IN ('', $2) GROUP BY visual_model""",
            transcript_model, visual_model,
        )
        return {r["key"]: int(r["n"]) for r in rows}


class UploadStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, upload: Upload) -> Upload:
        row = await self._pool.fetchrow(
            "INSERT INTO uploads (id, filename, content_type, size_bytes, state, expire_time) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            upload.id, upload.filename, upload.content_type, upload.size_bytes, upload.state,
            upload.expire_time,
        )
        return _record(Upload, row)

    async def get(self, upload_id: uuid.UUID) -> Upload:
        row = await self._pool.fetchrow("SELECT * FROM uploads WHERE id = $1", upload_id)
        if row is None:
            raise NotFound(f"upload {upload_id} not found", reason="UPLOAD_NOT_FOUND")
        return _record(Upload, row)

    async def advance(self, upload_id: uuid.UUID, expected_offset: int, new_size: int) -> bool:
        """Move committed_size from ``expected_offset`` to ``new_size``; False if someone else moved it."""
        status = await self._pool.execute(
            "UPDATE uploads SET committed_size = $3 WHERE id = $1 AND committed_size = $2 "
            "AND state = 'ACTIVE'",
            upload_id, expected_offset, new_size,
        )
        return not status.endswith(" 0")

    async def expire(self) -> list[uuid.UUID]:
        """Cancel every active upload past its expiry time; returns their ids."""
        rows = await self._pool.fetch(
            "UPDATE uploads SET state = 'CANCELLED' WHERE state = 'ACTIVE' AND expire_time < now() RETURNING id"
        )
        return [row["id"] for row in rows]

    async def active_among(self, upload_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        rows = await self._pool.fetch(
            "SELECT id FROM uploads WHERE id = ANY($1::uuid[]) AND state = 'ACTIVE'", list(upload_ids)
        )
        return {row["id"] for row in rows}

    async def cancel(self, upload_id: uuid.UUID) -> None:
        """An active upload to CANCELLED; a completed one stays completed."""
        await self._pool.execute("UPDATE uploads SET state = 'CANCELLED' WHERE id = $1 AND state = 'ACTIVE'", upload_id)

    @asynccontextmanager
    async def exclusive(self, upload_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold the upload's lock for the block: one write or completion of an upload at a time.

        A PostgreSQL advisory lock on a pooled connection, so every ingest process shares it and a crashed
        process releases it with its connection. Held elsewhere → ABORTED ``UPLOAD_BUSY`` at once (the
        client fetches the upload and resumes) rather than a wait behind a completion's validation."""
        key = int.from_bytes(upload_id.bytes[:8], "big", signed=True)
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                raise Aborted(
                    "another request is writing or completing this upload; fetch it and resume",
                    reason="UPLOAD_BUSY", metadata={"name": f"uploads/{upload_id}"},
                )
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)


class JobStore:
    """Jobs, their ordered events and dead letters."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, job_id: uuid.UUID) -> Job:
        row = await self._pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        if row is None:
            raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND",
                           metadata={"name": f"jobs/{job_id}"})
        return _record(Job, row)

    async def list_page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None,
        video_id: uuid.UUID | None = None, state: str | None = None,
    ) -> list[Job]:
        sql, args = _newest_first("SELECT * FROM jobs", {"video_id": video_id, "state": state or None}, after, limit)
        return [_record(Job, r) for r in await self._pool.fetch(sql, *args)]

    async def events(self, job_id: uuid.UUID, after_sequence: int = 0) -> list[JobEvent]:
        rows = await self._pool.fetch(
            "SELECT * FROM job_events WHERE job_id = $1 AND sequence > $2 ORDER BY sequence",
            job_id, after_sequence,
        )
        return [_record(JobEvent, r) for r in rows]

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
        return [_record(Job, r) for r in rows]

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
        return _record(JobEvent, row)

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
        return _record(Job, row)

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
        sql, args = _newest_first("SELECT * FROM dead_letters", {}, after, limit)
        return [_record(DeadLetter, r) for r in await self._pool.fetch(sql, *args)]


_CLIP_SELECT = (
    "SELECT c.*, v.title AS video_title, v.blob_key AS video_blob_key, "
    "coalesce((SELECT string_agg(s.text, ' ' ORDER BY s.idx) FROM transcript_segments s "
    "WHERE s.clip_id = c.id), '') AS transcript "
    "FROM clips c JOIN videos v ON v.id = c.video_id"
)


class ClipStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, clip_id: uuid.UUID) -> Clip:
        row = await self._pool.fetchrow(f"{_CLIP_SELECT} WHERE c.id = $1", clip_id)
        if row is None:
            raise NotFound(f"clip {clip_id} not found", reason="CLIP_NOT_FOUND",
                           metadata={"name": f"clips/{clip_id}"})
        return _record(Clip, row)

    async def segments_with_clips(self, segment_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Segment]:
        rows = await self._pool.fetch(
            "SELECT * FROM transcript_segments WHERE id = ANY($1::uuid[])", list(segment_ids)
        )
        return {r["id"]: _record(Segment, r) for r in rows}

    async def clips_for_search(
        self, clip_ids: Sequence[uuid.UUID], *, min_duration_s: float = 0, max_duration_s: float = 0,
        created_after: datetime | None = None, created_before: datetime | None = None,
    ) -> dict[uuid.UUID, Clip]:
        """The READY clips among ``clip_ids`` that pass the filters, keyed by id."""
        args: list[Any] = [list(clip_ids)]
        where = ["c.id = ANY($1::uuid[])", "v.state = 'READY'"]
        if min_duration_s > 0:
            args.append(min_duration_s)
            where.append(f"v.duration_s >= ${len(args)}")
        if max_duration_s > 0:
            args.append(max_duration_s)
            where.append(f"v.duration_s <= ${len(args)}")
        if created_after is not None:
            args.append(created_after)
            where.append(f"v.create_time >= ${len(args)}")
        if created_before is not None:
            args.append(created_before)
            where.append(f"v.create_time < ${len(args)}")
        rows = await self._pool.fetch(f"{_CLIP_SELECT} WHERE {' AND '.join(where)}", *args)
        return {r["id"]: _record(Clip, r) for r in rows}

    async def segment_ids_by_clip(self, clip_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
        rows = await self._pool.fetch(
            "SELECT clip_id, id FROM transcript_segments WHERE clip_id = ANY($1::uuid[])", list(clip_ids)
        )
        found: dict[uuid.UUID, list[uuid.UUID]] = {}
        for r in rows:
            found.setdefault(r["clip_id"], []).append(r["id"])
        return found

    async def log_search(self, search_id: uuid.UUID, query: str, result_count: int, latency_ms: float) -> None:
        await self._pool.execute(
            "INSERT INTO searches (id, query, result_count, latency_ms) VALUES ($1, $2, $3, $4)",
            search_id, query, result_count, latency_ms,
        )
