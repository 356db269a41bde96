"""Ingest's asyncpg repositories: videos and resumable uploads (schema ``ingest``, migrations beside this file).

Every change of a video commits, in the same transaction, the outbox rows other services act on
(``services.common.outbox``): the processing job to submit (pipeline), the video's facts to publish (search's
read model), on deletion the job and index deletions, and the owner's usage (analytics: a video stored, ready,
deleted; ``services.common.usage_events``). SQL lives here and nowhere else; the repositories
hand out the plain records of ``services.ingest.records``.

Ownership is filtered inside every query a public RPC reaches: those methods take ``owner``, the caller's
scope (``Principal.scope``: their user id, or None for administrators and the system, who see everyone's),
and a row of another owner is exactly as NOT_FOUND as a row that does not exist, so existence does not leak.
The system's own paths (the pipeline's reads and reports, the outbox relays, the staging sweep) read unscoped.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2 as pipeline_pb
from clipmind.search.internal.v1 import search_internal_service_pb2 as search_pb

from services.common import outbox, usage_events
from services.common import priority as job_priority
from services.common.db import Database
from services.common.errors import Aborted, FailedPrecondition, NotFound
from services.common.names import upload_name, user_name, video_name
from services.common.rows import newest_first, to_record
from services.ingest.records import Upload, Video

SCHEMA = "ingest"
MIGRATIONS = Path(__file__).parent / "migrations"

# Outbox topics: what other services must do after a video changed (payloads: the internal requests, except
# FACTS_TOPIC, whose payload is the video id: the relay sends the video's facts as they are when it delivers).
SUBMIT_JOB_TOPIC = "pipeline.submit_video_job"
DELETE_JOBS_TOPIC = "pipeline.delete_video_jobs"
FACTS_TOPIC = "search.video_facts"
DELETE_INDEX_TOPIC = "search.delete_video_index"

# Facts a processing update may set (IngestInternalService.UpdateVideoProcessing).
PROCESSING_FACTS = frozenset({
    "duration_s", "width", "height", "frame_rate", "video_codec", "audio_codec", "has_audio", "thumbnail_key",
    "scene_count", "transcript_source", "transcript_model", "visual_model", "transcript_language",
})
_VIDEO_COLUMNS = [f.name for f in fields(Video)]
_SET_BY_DATABASE = frozenset({"create_time", "update_time", "processing_fence", "revision"})


def _owned(n: int) -> str:
    """The ownership filter on the query's parameter ``$n``, the caller's scope: their own rows, or every row
    when it is NULL (administrators and the system)."""
    return f"(${n}::uuid IS NULL OR owner_id = ${n})"


def _not_found(video_id: uuid.UUID) -> NotFound:
    """The error of a missing video, and of another owner's: the same, so a caller learns nothing of it."""
    return NotFound(f"video {video_id} not found", reason="VIDEO_NOT_FOUND", metadata={"name": video_name(video_id)})


def _upload_not_found(upload_id: uuid.UUID) -> NotFound:
    """The error of a missing upload, and of another owner's."""
    return NotFound(f"upload {upload_id} not found", reason="UPLOAD_NOT_FOUND",
                    metadata={"name": upload_name(upload_id)})


async def _publish_facts(conn: asyncpg.Connection, video_id: uuid.UUID) -> int:
    return await outbox.add(conn, FACTS_TOPIC, str(video_id).encode())


async def _changed(
    conn: asyncpg.Connection, video_id: uuid.UUID, values: dict[str, Any], *, owner: uuid.UUID | None = None
) -> int:
    """Set ``values`` on the video (its revision +1, its facts published) inside the caller's transaction, if
    it is ``owner``'s (None: anyone's); returns the facts' outbox id."""
    cols = list(values)
    sets = "".join(f", {c} = ${i + 3}" for i, c in enumerate(cols))
    status = await conn.execute(
        f"UPDATE videos SET revision = revision + 1, update_time = now(){sets} WHERE id = $1 AND {_owned(2)}",
        video_id, owner, *[values[c] for c in cols],
    )
    if status.endswith(" 0"):
        raise _not_found(video_id)
    return await _publish_facts(conn, video_id)


class VideoStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def get(self, video_id: uuid.UUID, *, owner: uuid.UUID | None = None) -> Video:
        """The video if it is ``owner``'s; ``owner`` None reads any video (administrators, and the system's own
        paths: the pipeline's reads, the relays), which is why it is the default here and required of the
        domain (``ports.Videos``)."""
        row = await self._pool.fetchrow(f"SELECT * FROM videos WHERE id = $1 AND {_owned(2)}", video_id, owner)
        if row is None:
            raise _not_found(video_id)
        return to_record(Video, row)

    async def list_page(
        self, *, owner: uuid.UUID | None, limit: int, after: tuple[datetime, uuid.UUID] | None,
        state: str | None = None,
    ) -> list[Video]:
        """``owner``'s videos (None: everyone's) newest first, keyset-paginated by (create_time, id); a user's
        come from the index on (owner_id, create_time, id)."""
        sql, args = newest_first("SELECT * FROM videos", {"owner_id": owner, "state": state or None}, after, limit)
        return [to_record(Video, r) for r in await self._pool.fetch(sql, *args)]

    async def count(self, *, owner: uuid.UUID | None, state: str | None = None) -> int:
        """How many videos ``owner`` has (None: everyone), in ``state`` if given. The filters are written only
        when set (as ``list_page`` does), so a user's count reads the owner index."""
        equals = {c: v for c, v in (("owner_id", owner), ("state", state or None)) if v is not None}
        where = " AND ".join(f"{c} = ${i + 1}" for i, c in enumerate(equals))
        sql = "SELECT count(*) FROM videos" + (f" WHERE {where}" if where else "")
        return int(await self._pool.fetchval(sql, *equals.values()))

    async def create(
        self, video: Video, upload_id: uuid.UUID | None = None, *, lock: uuid.UUID | None = None,
        priority: str = "STANDARD",
    ) -> int:
        """Insert the video row, and in the same transaction the outbox rows that ask the pipeline for its
        processing job and publish its facts to search (and close the upload, which must still be ACTIVE and
        held under ``lock``). Returns the job submission's outbox id: the job is submitted when the relay
        delivers it, however long the pipeline service is away."""
        cols = [c for c in _VIDEO_COLUMNS if c not in _SET_BY_DATABASE]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO videos ({', '.join(cols)}) "
                f"VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
                *[getattr(video, c) for c in cols],
            )
            submit = pipeline_pb.SubmitVideoJobRequest(video=video_name(video.id), generation=video.generation,
                                                       owner=user_name(video.owner_id),
                                                       priority=job_priority.to_pb(priority))
            outbox_id = await outbox.add(conn, SUBMIT_JOB_TOPIC, submit.SerializeToString())
            await _publish_facts(conn, video.id)
            await usage_events.add(conn, usage_events.VIDEO_UPLOADED, video.owner_id, video_id=video.id,
                                   size_bytes=video.size_bytes)
            if upload_id is not None:
                status = await conn.execute(
                    "UPDATE uploads SET state = 'COMPLETED', video_id = $2 WHERE id = $1 AND state = 'ACTIVE' "
                    "AND lock_token IS NOT DISTINCT FROM $3",
                    upload_id, video.id, lock,
                )
                if status.endswith(" 0"):  # completed or cancelled by another request meanwhile: roll back
                    raise FailedPrecondition("upload is no longer active", reason="UPLOAD_NOT_ACTIVE")
        return outbox_id

    async def existing(self, video_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``video_ids`` that have a row (the orphan-blob sweep)."""
        rows = await self._pool.fetch("SELECT id FROM videos WHERE id = ANY($1::uuid[])", list(video_ids))
        return {row["id"] for row in rows}

    async def blob_keys_page(self, *, after: uuid.UUID | None, limit: int) -> list[tuple[uuid.UUID, str]]:
        """(id, source blob key) of every video, by id, ``limit`` after ``after`` (the missing-blob report)."""
        rows = await self._pool.fetch(
            "SELECT id, blob_key FROM videos WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2", after, limit)
        return [(row["id"], row["blob_key"]) for row in rows]

    async def update_fields(self, video_id: uuid.UUID, *, owner: uuid.UUID | None, **values: Any) -> Video:
        """Set fields a user may edit (title, description) of ``owner``'s video (None: anyone's)."""
        if values:
            async with self._pool.acquire() as conn, conn.transaction():
                await _changed(conn, video_id, values, owner=owner)
        return await self.get(video_id, owner=owner)

    async def apply_processing(
        self, video_id: uuid.UUID, fence: int, *, state: str = "", failure_reason: str = "",
        facts: dict[str, Any] | None = None,
    ) -> tuple[str, int | None]:
        """Record what a processing run (or a cancel) reported: ``state`` PROCESSING, READY, FAILED,
        CANCELLED (FAILED "processing cancelled" unless the video was READY already) or "" (facts only), and
        ``facts`` (``PROCESSING_FACTS``). Fenced: ``fence`` below the last one accepted is refused
        (FAILED_PRECONDITION ``RUN_SUPERSEDED``). Returns (state after, outbox id of the facts published, or
        None when nothing changed: the same update twice changes nothing the second time)."""
        values: dict[str, Any] = dict(facts or {})
        unknown = set(values) - PROCESSING_FACTS
        if unknown:
            raise ValueError(f"not processing facts: {sorted(unknown)}")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM videos WHERE id = $1 FOR UPDATE", video_id)
            if row is None:
                raise _not_found(video_id)
            if fence < row["processing_fence"]:
                raise FailedPrecondition(
                    f"a newer processing run (fence {row['processing_fence']}) updated this video already",
                    reason="RUN_SUPERSEDED")
            if state == "CANCELLED":
                if row["state"] in ("PENDING", "PROCESSING"):
                    values.update(state="FAILED", failure_reason=failure_reason or "processing cancelled")
            elif state == "FAILED":
                values.update(state="FAILED", failure_reason=failure_reason)
            elif state == "READY":
                values.update(state="READY", failure_reason="")
            elif state == "PROCESSING":
                values["state"] = "PROCESSING"
            elif state:
                raise ValueError(f"unknown processing state {state!r}")
            changes = {c: v for c, v in values.items() if row[c] != v}
            if not changes:
                if fence != row["processing_fence"]:
                    await conn.execute("UPDATE videos SET processing_fence = $2 WHERE id = $1", video_id, fence)
                return row["state"], None
            fact = await _changed(conn, video_id, {**changes, "processing_fence": fence})
            if changes.get("state") == "READY":  # processed (again): the owner's usage, the video's length
                await usage_events.add(conn, usage_events.VIDEO_PROCESSED, row["owner_id"], video_id=video_id,
                                       seconds=changes.get("duration_s", row["duration_s"]))
            return changes.get("state", row["state"]), fact

    async def delete(self, video_id: uuid.UUID, *, owner: uuid.UUID | None) -> Video:
        """Delete ``owner``'s video row (None: anyone's), and in the same transaction ask the pipeline to delete
        its jobs (a running one is cancelled) and search to delete its index."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"DELETE FROM videos WHERE id = $1 AND {_owned(2)} RETURNING *", video_id, owner)
            if row is None:
                raise _not_found(video_id)
            name = video_name(video_id)
            jobs, index = pipeline_pb.DeleteVideoJobsRequest(video=name), search_pb.DeleteVideoIndexRequest(video=name)
            await outbox.add(conn, DELETE_JOBS_TOPIC, jobs.SerializeToString())
            await outbox.add(conn, DELETE_INDEX_TOPIC, index.SerializeToString())
            await usage_events.add(conn, usage_events.VIDEO_DELETED, row["owner_id"], video_id=video_id,
                                   size_bytes=row["size_bytes"])
        return to_record(Video, row)


# An upload's lock outlives any one write or completion (validation of the largest video takes a few
# minutes at most); it only matters when its holder died, and then the client waits this long.
UPLOAD_LOCK_TTL_S = 600.0


class UploadStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def create(self, upload: Upload) -> Upload:
        row = await self._pool.fetchrow(
            "INSERT INTO uploads (id, owner_id, filename, content_type, size_bytes, state, expire_time) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            upload.id, upload.owner_id, upload.filename, upload.content_type, upload.size_bytes, upload.state,
            upload.expire_time,
        )
        return to_record(Upload, row)

    async def get(self, upload_id: uuid.UUID, *, owner: uuid.UUID | None) -> Upload:
        """The upload if it is ``owner``'s (None: anyone's)."""
        row = await self._pool.fetchrow(f"SELECT * FROM uploads WHERE id = $1 AND {_owned(2)}", upload_id, owner)
        if row is None:
            raise _upload_not_found(upload_id)
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
    async def exclusive(
        self, upload_id: uuid.UUID, *, owner: uuid.UUID | None, ttl_s: float = UPLOAD_LOCK_TTL_S
    ) -> AsyncIterator[uuid.UUID]:
        """Hold ``owner``'s upload's lock (None: anyone's) for the block: one write or completion of an upload
        at a time. Yields the lock's token, which fences the block's writes (``advance``, ``create``). Another
        owner's upload is NOT_FOUND, never busy: a stranger can neither hold it up nor learn that it exists.

        The lock is a lease in the upload's row (token + expiry), taken and released by one short statement
        each: no database connection is held while the block writes bytes or validates a video, so many
        concurrent uploads never wait on each other for connections. Every ingest process shares it; a
        crashed process's lease expires after ``ttl_s``. Held elsewhere → ABORTED ``UPLOAD_BUSY`` at once
        (the client fetches the upload and resumes) rather than a wait behind a completion's validation."""
        token = uuid.uuid4()
        row = await self._pool.fetchrow(
            "UPDATE uploads SET lock_token = $2, lock_expire_time = now() + make_interval(secs => $3) "
            f"WHERE id = $1 AND {_owned(4)} AND (lock_token IS NULL OR lock_expire_time < now()) RETURNING id",
            upload_id, token, ttl_s, owner,
        )
        if row is None:
            await self.get(upload_id, owner=owner)  # NOT_FOUND when there is no such upload of the owner
            raise Aborted(
                "another request is writing or completing this upload; fetch it and resume",
                reason="UPLOAD_BUSY", metadata={"name": upload_name(upload_id)}, retry_delay_s=1.0,
            )
        try:
            yield token
        finally:
            await self._pool.execute(
                "UPDATE uploads SET lock_token = NULL, lock_expire_time = NULL WHERE id = $1 AND lock_token = $2",
                upload_id, token,
            )
