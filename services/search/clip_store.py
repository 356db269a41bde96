"""asyncpg repository of the search service's index (schema ``search``, migrations beside this file): clips
(scenes) with their keyframes (one per few seconds of a scene, each with its CLIP vector), their transcript
segments and vectors, and the service's copy of the video facts that ingest
publishes (table ``videos``: filters and display, the index fence, and the tombstone of a deleted video).

Every row carries the user who owns its video (``owner_id``). Reads take the caller's scope (``owner``: a user
id, or None for administrators and the system) and filter by it in their SQL, so another user's clip is not
found, exactly as one that does not exist."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from services.common.db import Database
from services.common.errors import FailedPrecondition, NotFound
from services.common.names import clip_name
from services.common.rows import to_record
from services.search.ports import VectorItem
from services.search.records import Clip, Segment, VideoFacts, VideoIndex
from services.search.vectors import PgVectorIndex

SCHEMA = "search"
MIGRATIONS = Path(__file__).parent / "migrations"
# The owner of rows from before ownership, and of a video whose owner is not known yet: no user (the system's
# own id), so only administrators see them.
NO_OWNER = uuid.UUID(int=0)

_CLIP_SELECT = (
    "SELECT c.*, v.title AS video_title, v.blob_key AS video_blob_key, "
    "coalesce((SELECT string_agg(s.text, ' ' ORDER BY s.idx) FROM transcript_segments s "
    "WHERE s.clip_id = c.id), '') AS transcript "
    "FROM clips c JOIN videos v ON v.id = c.video_id"
)


def _owned(where: list[str], args: list[Any], owner: uuid.UUID | None, column: str) -> None:
    """Add ``column = owner`` to a query's conditions, unless the caller sees everyone's (``owner`` None)."""
    if owner is not None:
        args.append(owner)
        where.append(f"{column} = ${len(args)}")


async def _lock_video(conn: asyncpg.Connection, video_id: uuid.UUID, owner: uuid.UUID = NO_OWNER) -> asyncpg.Record:
    """The video's row, made if its facts have not arrived yet (owned by ``owner``), locked for the transaction."""
    await conn.execute("INSERT INTO videos (id, owner_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                       video_id, owner)
    row = await conn.fetchrow("SELECT * FROM videos WHERE id = $1 FOR UPDATE", video_id)
    assert row is not None
    return row


class ClipStore:
    """``text_config`` is the text search configuration of the cues' tsvectors (lexical match): the one
    ``retrieval.PgRetrieval`` parses queries with."""

    def __init__(self, pool: Database, *, text_config: str = "english") -> None:
        self._pool = pool
        self._vectors = PgVectorIndex(pool)  # vectors live in the same database: written in one transaction
        self._text_config = text_config

    async def replace_index(self, video_id: uuid.UUID, fence: int, result: VideoIndex, *, owner: uuid.UUID) -> None:
        """Replace the video's clips, segments and vectors with ``result``, all owned by ``owner``, atomically —
        unless a run with a larger ``fence`` wrote the video's index already (FAILED_PRECONDITION
        ``RUN_SUPERSEDED``: nothing is written) or the video was deleted (NOT_FOUND). The same fence again
        rewrites the same rows (ids derive from video and index). The video's facts may arrive before or after;
        the read model takes the owner too (a video's owner never changes, so either source may set it)."""
        clip_of = {k.id: k.clip_id for k in result.keyframes}
        async with self._pool.acquire() as conn, conn.transaction():
            video = await _lock_video(conn, video_id, owner)
            if video["deleted"]:
                raise NotFound(f"video {video_id} was deleted", reason="VIDEO_NOT_FOUND")
            if video["index_fence"] > fence:
                raise FailedPrecondition(f"a newer run (fence {video['index_fence']}) indexed this video already",
                                         reason="RUN_SUPERSEDED")
            await conn.execute("UPDATE videos SET index_fence = $2, owner_id = $3, update_time = now() WHERE id = $1",
                               video_id, fence, owner)
            await conn.execute("DELETE FROM clips WHERE video_id = $1", video_id)
            await conn.executemany(
                "INSERT INTO clips (id, video_id, owner_id, idx, start_s, end_s, thumbnail_key) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [(c.id, video_id, owner, c.idx, c.start_s, c.end_s, c.thumbnail_key) for c in result.clips],
            )
            await conn.executemany(
                "INSERT INTO keyframes (id, video_id, owner_id, clip_id, idx, time_s, start_s, end_s, thumbnail_key) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [(k.id, video_id, owner, k.clip_id, k.idx, k.time_s, k.start_s, k.end_s, k.thumbnail_key)
                 for k in result.keyframes],
            )
            await conn.executemany(
                "INSERT INTO transcript_segments (id, video_id, owner_id, clip_id, idx, start_s, end_s, text, "
                "source, tsv) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, to_tsvector($10::regconfig, $8))",
                [(g.id, video_id, owner, g.clip_id, g.idx, g.start_s, g.end_s, g.text, g.source, self._text_config)
                 for g in result.segments],
            )
            await self._vectors.upsert(
                "transcript", result.transcript_model,
                [VectorItem(seg_id, video_id, owner, vec) for seg_id, vec in result.vectors], conn=conn,
            )
            await self._vectors.upsert(
                "visual", result.visual_model,
                [VectorItem(frame_id, video_id, owner, vec, clip_of.get(frame_id))
                 for frame_id, vec in result.visual_vectors], conn=conn,
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
        """Keep ``facts`` unless a newer revision (or the video's deletion) is held already; True if kept.
        Facts without an owner (``facts.owner_id`` None) keep the owner the row has (``NO_OWNER`` for a new one)."""
        row = await self._pool.fetchrow(
            """INSERT INTO videos (id, revision, title, blob_key, state, duration_s, create_time, owner_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8::uuid, $9::uuid))
               ON CONFLICT (id) DO UPDATE SET revision = EXCLUDED.revision, title = EXCLUDED.title,
                   blob_key = EXCLUDED.blob_key, state = EXCLUDED.state, duration_s = EXCLUDED.duration_s,
                   create_time = EXCLUDED.create_time, owner_id = coalesce($8::uuid, videos.owner_id),
                   update_time = now()
               WHERE videos.revision < EXCLUDED.revision AND NOT videos.deleted
               RETURNING id""",
            facts.video_id, facts.revision, facts.title, facts.blob_key, facts.state, facts.duration_s,
            facts.create_time, facts.owner_id, NO_OWNER,
        )
        return row is not None

    async def video_owner(self, video_id: uuid.UUID) -> uuid.UUID | None:
        """Who owns the video (its read model's owner), None when the video is not known here."""
        owner = await self._pool.fetchval("SELECT owner_id FROM videos WHERE id = $1", video_id)
        return owner if isinstance(owner, uuid.UUID) else None

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

    async def get(self, clip_id: uuid.UUID, *, owner: uuid.UUID | None) -> Clip:
        """The clip, if ``owner`` owns it (None: anyone's); NOT_FOUND otherwise, as for a clip that does not
        exist, so that nobody learns which ids exist."""
        where, args = ["c.id = $1"], [clip_id]
        _owned(where, args, owner, "c.owner_id")
        row = await self._pool.fetchrow(f"{_CLIP_SELECT} WHERE {' AND '.join(where)}", *args)
        if row is None:
            raise NotFound(f"clip {clip_id} not found", reason="CLIP_NOT_FOUND",
                           metadata={"name": clip_name(clip_id)})
        return to_record(Clip, row)

    async def has_video(self, video_id: uuid.UUID, *, owner: uuid.UUID | None) -> bool:
        where, args = ["id = $1", "NOT deleted"], [video_id]
        _owned(where, args, owner, "owner_id")
        return await self._pool.fetchval(f"SELECT 1 FROM videos WHERE {' AND '.join(where)}", *args) == 1

    async def video_clips(self, video_id: uuid.UUID, *, owner: uuid.UUID | None, from_idx: int,
                          limit: int) -> list[Clip]:
        where, args = ["c.video_id = $1", "c.idx >= $2"], [video_id, from_idx, limit]
        _owned(where, args, owner, "c.owner_id")
        rows = await self._pool.fetch(f"{_CLIP_SELECT} WHERE {' AND '.join(where)} ORDER BY c.idx LIMIT $3", *args)
        return [to_record(Clip, r) for r in rows]

    async def video_cues(self, video_id: uuid.UUID, *, owner: uuid.UUID | None, from_idx: int,
                         limit: int) -> list[Segment]:
        where, args = ["video_id = $1", "idx >= $2"], [video_id, from_idx, limit]
        _owned(where, args, owner, "owner_id")
        rows = await self._pool.fetch(
            "SELECT id, video_id, clip_id, idx, start_s, end_s, text, source FROM transcript_segments "
            f"WHERE {' AND '.join(where)} ORDER BY idx LIMIT $3", *args)
        return [to_record(Segment, r) for r in rows]

    async def cues_around(self, cue_ids: Sequence[uuid.UUID], *, owner: uuid.UUID | None,
                          reach: int) -> dict[uuid.UUID, list[Segment]]:
        """Each cue's neighbours in its video (``reach`` each way, by cue index), in order, itself included."""
        where, args = ["c.id = ANY($1::uuid[])"], [list(cue_ids), reach]
        _owned(where, args, owner, "c.owner_id")
        rows = await self._pool.fetch(
            "SELECT c.id AS center, n.* FROM transcript_segments c JOIN transcript_segments n "
            "ON n.video_id = c.video_id AND n.idx BETWEEN c.idx - $2 AND c.idx + $2 "
            f"WHERE {' AND '.join(where)} ORDER BY c.id, n.idx", *args)
        found: dict[uuid.UUID, list[Segment]] = {}
        for r in rows:
            found.setdefault(r["center"], []).append(
                Segment(r["id"], r["video_id"], r["clip_id"], r["idx"], r["start_s"], r["end_s"], r["text"],
                        r["source"]))
        return found

    async def get_many(self, clip_ids: Sequence[uuid.UUID], *, owner: uuid.UUID | None) -> dict[uuid.UUID, Clip]:
        """The clips among ``clip_ids`` of READY videos that ``owner`` owns (None: anyone's), by id."""
        where, args = ["c.id = ANY($1::uuid[])", "v.state = 'READY'"], [list(clip_ids)]
        _owned(where, args, owner, "c.owner_id")
        rows = await self._pool.fetch(f"{_CLIP_SELECT} WHERE {' AND '.join(where)}", *args)
        return {r["id"]: to_record(Clip, r) for r in rows}
