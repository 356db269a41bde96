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

from services.common.errors import Aborted, FailedPrecondition, NotFound
from services.common.records import (
    TERMINAL_JOB_STATES,
    Job,
    ProcessedVideo,
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


class VideoStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._vectors = PgVectorIndex(pool)  # vectors live in the same database: written in one transaction

    async def get(self, video_id: uuid.UUID) -> Video:
        row = await self._pool.fetchrow(f"{_VIDEO_SELECT} WHERE v.id = $1", video_id)
        if row is None:
            raise NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND",
                           metadata={"name": f"videos/{video_id}"})
        return to_record(Video, row)

    async def list_page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None, state: str | None = None
    ) -> list[Video]:
        """Newest first, keyset-paginated by (create_time, id)."""
        sql, args = newest_first(_VIDEO_SELECT, {"v.state": state or None}, after, limit, alias="v.")
        return [to_record(Video, r) for r in await self._pool.fetch(sql, *args)]

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
        return to_record(Video, row)

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
        return to_record(Upload, row)

    async def get(self, upload_id: uuid.UUID) -> Upload:
        row = await self._pool.fetchrow("SELECT * FROM uploads WHERE id = $1", upload_id)
        if row is None:
            raise NotFound(f"upload {upload_id} not found", reason="UPLOAD_NOT_FOUND")
        return to_record(Upload, row)

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
