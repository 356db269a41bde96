"""asyncpg repositories for videos and uploads, and the SQL helpers the other repositories share
(``job_store``: jobs, events, dead letters; ``clip_store``: clips, segments, the search log).

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
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2 as pipeline_pb

from services.common import outbox
from services.common.db import Database
from services.common.errors import Aborted, FailedPrecondition, NotFound
from services.common.records import (
    Run,
    Upload,
    Video,
    job_id_for,
)

# Outbox topic of "a stored video needs its processing job" (ingest → PipelineInternalService.SubmitVideoJob).
SUBMIT_JOB_TOPIC = "pipeline.submit_video_job"

_VIDEO_COLUMNS = [f.name for f in fields(Video) if f.name != "job_id"]
_VIDEO_SELECT = (
    "SELECT v.*, (SELECT j.id FROM jobs j WHERE j.video_id = v.id "
    "ORDER BY j.create_time DESC LIMIT 1) AS job_id FROM videos v"
)


def newest_first(
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


def to_record(cls: Any, row: asyncpg.Record) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in dict(row).items() if k in names})


def _video(row: asyncpg.Record) -> Video:
    video: Video = to_record(Video, row)
    if video.job_id is None:  # not submitted yet (the pipeline is away): the id it will have
        video.job_id = job_id_for(video.id, 1)
    return video


async def _lock_run(conn: asyncpg.Connection, run: Run) -> None:
    """Lock the run's job row for the transaction; FAILED_PRECONDITION unless the run still owns it. Writes
    of a run happen under this lock, so a cancel or a take-over waits for them or they never happen."""
    row = await conn.fetchrow("SELECT state, run_id FROM jobs WHERE id = $1 FOR UPDATE", run.job_id)
    if row is None or row["state"] != "RUNNING" or row["run_id"] != run.run_id:
        raise FailedPrecondition("this run no longer owns the job (cancelled or taken over)",
                                 reason="RUN_SUPERSEDED")


class VideoStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def get(self, video_id: uuid.UUID) -> Video:
        row = await self._pool.fetchrow(f"{_VIDEO_SELECT} WHERE v.id = $1", video_id)
        if row is None:
            raise NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND",
                           metadata={"name": f"videos/{video_id}"})
        return _video(row)

    async def list_page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None, state: str | None = None
    ) -> list[Video]:
        """Newest first, keyset-paginated by (create_time, id)."""
        sql, args = newest_first(_VIDEO_SELECT, {"v.state": state or None}, after, limit, alias="v.")
        return [_video(r) for r in await self._pool.fetch(sql, *args)]

    async def count(self, state: str | None = None) -> int:
        if state:
            return int(await self._pool.fetchval("SELECT count(*) FROM videos WHERE state = $1", state))
        return int(await self._pool.fetchval("SELECT count(*) FROM videos"))

    async def create(
        self, video: Video, upload_id: uuid.UUID | None = None, *, lock: uuid.UUID | None = None,
        generation: int = 1,
    ) -> int:
        """Insert the video row, and in the same transaction the outbox row that asks the pipeline for its
        processing job (and close the upload, which must still be ACTIVE and held under ``lock``). Returns
        the outbox row's id: the job is submitted when the relay delivers it, however long the pipeline
        service is away."""
        cols = [c for c in _VIDEO_COLUMNS if c not in ("create_time", "update_time")]
        values = [getattr(video, c) for c in cols]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO videos ({', '.join(cols)}) "
                f"VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
                *values,
            )
            submit = pipeline_pb.SubmitVideoJobRequest(video=f"videos/{video.id}", generation=generation)
            outbox_id = await outbox.add(conn, SUBMIT_JOB_TOPIC, submit.SerializeToString())
            if upload_id is not None:
                status = await conn.execute(
                    "UPDATE uploads SET state = 'COMPLETED', video_id = $2 WHERE id = $1 AND state = 'ACTIVE' "
                    "AND lock_token IS NOT DISTINCT FROM $3",
                    upload_id, video.id, lock,
                )
                if status.endswith(" 0"):  # completed or cancelled by another request meanwhile: roll back
                    raise FailedPrecondition("upload is no longer active", reason="UPLOAD_NOT_ACTIVE")
        return outbox_id

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

    async def update_for_run(self, run: Run, **values: Any) -> None:
        """Set video fields on behalf of a job run, only while that run owns its job (fenced): a cancelled
        or taken-over run writes nothing (FAILED_PRECONDITION ``RUN_SUPERSEDED``)."""
        cols = list(values)
        sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(cols))
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_run(conn, run)
            status = await conn.execute(
                f"UPDATE videos SET {sets}, update_time = now() WHERE id = $1", run.video_id,
                *[values[c] for c in cols],
            )
            if status.endswith(" 0"):
                raise NotFound(f"video {run.video_id} was deleted", reason="VIDEO_NOT_FOUND")

    async def delete(self, video_id: uuid.UUID) -> Video:
        row = await self._pool.fetchrow("DELETE FROM videos WHERE id = $1 RETURNING *", video_id)
        if row is None:
            raise NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND")
        return to_record(Video, row)

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


# An upload's lock outlives any one write or completion (validation of the largest video takes a few
# minutes at most); it only matters when its holder died, and then the client waits this long.
UPLOAD_LOCK_TTL_S = 600.0


class UploadStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def create(self, upload: Upload) -> Upload:
        row = await self._pool.fetchrow(
            "INSERT INTO uploads (id, filename, content_type, size_bytes, state, expire_time) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            upload.id, upload.filename, upload.content_type, upload.size_bytes, upload.state,
            upload.expire_time,
        )
        return to_record(Upload, row)

    async def get(self, upload_id: uuid.UUID) -> Upload:
        row = await self._pool.fetchrow("SELECT * FROM uploads WHERE id = $1", upload_id)
        if row is None:
            raise NotFound(f"upload {upload_id} not found", reason="UPLOAD_NOT_FOUND")
        return to_record(Upload, row)

    async def advance(self, upload_id: uuid.UUID, expected_offset: int, new_size: int, *, lock: uuid.UUID) -> bool:
        """Move committed_size from ``expected_offset`` to ``new_size`` under the lock ``lock``; False if
        someone else moved it or the lock was lost (expired and taken)."""
        status = await self._pool.execute(
            "UPDATE uploads SET committed_size = $3 WHERE id = $1 AND committed_size = $2 "
            "AND state = 'ACTIVE' AND lock_token = $4",
            upload_id, expected_offset, new_size, lock,
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
    async def exclusive(self, upload_id: uuid.UUID, *, ttl_s: float = UPLOAD_LOCK_TTL_S) -> AsyncIterator[uuid.UUID]:
        """Hold the upload's lock for the block: one write or completion of an upload at a time. Yields the
        lock's token, which fences the block's writes (``advance``, ``create``).

        The lock is a lease in the upload's row (token + expiry), taken and released by one short statement
        each: no database connection is held while the block writes bytes or validates a video, so many
        concurrent uploads never wait on each other for connections. Every ingest process shares it; a
        crashed process's lease expires after ``ttl_s``. Held elsewhere → ABORTED ``UPLOAD_BUSY`` at once
        (the client fetches the upload and resumes) rather than a wait behind a completion's validation."""
        token = uuid.uuid4()
        row = await self._pool.fetchrow(
            "UPDATE uploads SET lock_token = $2, lock_expire_time = now() + make_interval(secs => $3) "
            "WHERE id = $1 AND (lock_token IS NULL OR lock_expire_time < now()) RETURNING id",
            upload_id, token, ttl_s,
        )
        if row is None:
            await self.get(upload_id)  # NOT_FOUND when there is no such upload
            raise Aborted(
                "another request is writing or completing this upload; fetch it and resume",
                reason="UPLOAD_BUSY", metadata={"name": f"uploads/{upload_id}"}, retry_delay_s=1.0,
            )
        try:
            yield token
        finally:
            await self._pool.execute(
                "UPDATE uploads SET lock_token = NULL, lock_expire_time = NULL WHERE id = $1 AND lock_token = $2",
                upload_id, token,
            )
