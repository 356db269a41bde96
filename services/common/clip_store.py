"""asyncpg repository for clips (scenes) and their transcript segments."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.common.db import Database
from services.common.errors import NotFound
from services.common.records import Clip, Segment
from services.common.store import to_record

_CLIP_SELECT = (
    "SELECT c.*, v.title AS video_title, v.blob_key AS video_blob_key, "
    "coalesce((SELECT string_agg(s.text, ' ' ORDER BY s.idx) FROM transcript_segments s "
    "WHERE s.clip_id = c.id), '') AS transcript "
    "FROM clips c JOIN videos v ON v.id = c.video_id"
)


class ClipStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

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
