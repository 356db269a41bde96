"""asyncpg repository of the search service's index (schema ``search``, migrations beside this file): clips
(scenes), their transcript segments and vectors, and the service's copy of the video facts that ingest
publishes (table ``videos``: filters and display, the index fence, and the tombstone of a deleted video)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from services.common.db import Database
from services.common.errors import FailedPrecondition, NotFound
from services.common.rows import to_record
from services.search.ports import VectorItem
from services.search.records import Clip, Segment, VideoFacts, VideoIndex
from services.search.vectors import PgVectorIndex

SCHEMA = "search"
MIGRATIONS = Path(__file__).parent / "migrations"

_CLIP_SELECT = (
    "SELECT c.*, v.title AS video_title, v.blob_key AS video_blob_key, "
    "coalesce((SELECT string_agg(s.text, ' ' ORDER BY s.idx) FROM transcript_segments s "
    "WHERE s.clip_id = c.id), '') AS transcript "
    "FROM clips c JOIN videos v ON v.id = c.video_id"
)


async def _lock_video(conn: asyncpg.Connection, video_id: uuid.UUID) -> asyncpg.Record:
    """The video's row, made if its facts have not arrived yet, locked for the transaction."""
    await conn.execute("INSERT INTO videos (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", video_id)
    row = await conn.fetchrow("SELECT * FROM videos WHERE id = $1 FOR UPDATE", video_id)
    assert row is not None
    return row


class ClipStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool
        self._vectors = PgVectorIndex(pool)  # vectors live in the same database: written in one transaction

    async def replace_index(self, video_id: uuid.UUID, fence: int, result: VideoIndex) -> None:
        """Replace the video's clips, segments and vectors with ``result``, atomically — unless a run with a
        larger ``fence`` wrote the video's index already (FAILED_PRECONDITION ``RUN_SUPERSEDED``: nothing is
        written) or the video was deleted (NOT_FOUND). The same fence again rewrites the same rows (ids derive
        from video and index). The video's facts may arrive before or after."""
        async with self._pool.acquire() as conn, conn.transaction():
            video = await _lock_video(conn, video_id)
            if video["deleted"]:
                raise NotFound(f"video {video_id} was deleted", reason="VIDEO_NOT_FOUND")
            if video["index_fence"] > fence:
                raise FailedPrecondition(f"a newer run (fence {video['index_fence']}) indexed this video already",
                                         reason="RUN_SUPERSEDED")
            await conn.execute("UPDATE videos SET index_fence = $2, update_time = now() WHERE id = $1",
                               video_id, fence)
            await conn.execute("DELETE FROM clips WHERE video_id = $1", video_id)
            await conn.executemany(
                "INSERT INTO clips (id, video_id, idx, start_s, end_s, thumbnail_key) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                [(c.id, video_id, c.idx, c.start_s, c.end_s, c.thumbnail_key) for c in result.clips],
            )
            await conn.executemany(
                "INSERT INTO transcript_segments (id, video_id, clip_id, idx, start_s, end_s, text, source) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [(g.id, video_id, g.clip_id, g.idx, g.start_s, g.end_s, g.text, g.source) for g in result.segments],
            )
            await self._vectors.upsert(
                "transcript", result.transcript_model,
                [VectorItem(seg_id, video_id, vec) for seg_id, vec in result.vectors], conn=conn,
            )
            await self._vectors.upsert(
                "visual", result.visual_model,
                [VectorItem(clip_id, video_id, vec) for clip_id, vec in result.visual_vectors], conn=conn,
            )

    async def delete_index(self, video_id: uuid.UUID) -> int:
        """Delete the video's clips (segments and vectors go with them) and keep a tombstone, so a late index
        write or facts update cannot bring the video back; returns how many clips. Idempotent."""
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_video(conn, video_id)
            status = await conn.execute("DELETE FROM clips WHERE video_id = $1", video_id)
            await conn.execute("UPDATE videos SET deleted = true, state = 'DELETED', update_time = now() "
                               "WHERE id = $1", video_id)
        return int(status.split()[-1])

    async def upsert_facts(self, facts: VideoFacts) -> bool:
        """Keep ``facts`` unless a newer revision (or the video's deletion) is held already; True if kept."""
        row = await self._pool.fetchrow(
            """INSERT INTO videos (id, revision, title, blob_key, state, duration_s, create_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (id) DO UPDATE SET revision = EXCLUDED.revision, title = EXCLUDED.title,
                   blob_key = EXCLUDED.blob_key, state = EXCLUDED.state, duration_s = EXCLUDED.duration_s,
                   create_time = EXCLUDED.create_time, update_time = now()
               WHERE videos.revision < EXCLUDED.revision AND NOT videos.deleted
               RETURNING id""",
            facts.video_id, facts.revision, facts.title, facts.blob_key, facts.state, facts.duration_s,
            facts.create_time,
        )
        return row is not None

    async def stale_models(self, transcript_model: str, visual_model: str) -> dict[str, int]:
        """Videos with vectors from another model than the one in use (reindex needed), counted per
        "modality:model"."""
        rows = await self._pool.fetch(
            """SELECT 'transcript:' || model AS key, count(DISTINCT video_id) AS n FROM transcript_vectors
                WHERE model <> $1 GROUP BY model
               UNION ALL
               SELECT 'visual:' || model, count(DISTINCT video_id) FROM visual_vectors
                WHERE model <> $2 GROUP BY model""",
            transcript_model, visual_model,
        )
        return {r["key"]: int(r["n"]) for r in rows}

    async def get(self, clip_id: uuid.UUID) -> Clip:
        row = await self._pool.fetchrow(f"{_CLIP_SELECT} WHERE c.id = $1", clip_id)
        if row is None:
            raise NotFound(f"clip {clip_id} not found", reason="CLIP_NOT_FOUND",
                           metadata={"name": f"clips/{clip_id}"})
        return to_record(Clip, row)

    async def segments_with_clips(self, segment_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Segment]:
        rows = await self._pool.fetch(
            "SELECT * FROM transcript_segments WHERE id = ANY($1::uuid[])", list(segment_ids)
        )
        return {r["id"]: to_record(Segment, r) for r in rows}

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
        return {r["id"]: to_record(Clip, r) for r in rows}

    async def segment_ids_by_clip(self, clip_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
        rows = await self._pool.fetch(
            "SELECT clip_id, id FROM transcript_segments WHERE clip_id = ANY($1::uuid[])", list(clip_ids)
        )
        found: dict[uuid.UUID, list[uuid.UUID]] = {}
        for r in rows:
            found.setdefault(r["clip_id"], []).append(r["id"])
        return found
