"""The pgvector implementation (HNSW, cosine) of the ``ports.VectorIndex`` Protocol: the write side of the vectors.

An index holds one vector per item id in a named collection ("transcript": SBERT 384-d per transcript segment,
"visual": CLIP 512-d per keyframe, several per scene).
Each vector records the model that made it and the user who owns it. Searches read them through
``retrieval.PgRetrieval`` (filtered HNSW scans joined with the clips they belong to).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.db import Database
from services.search.ports import VectorItem

_TABLES = {"transcript": "transcript_vectors", "visual": "visual_vectors"}


class PgVectorIndex:
    """pgvector tables in the metadata database (HNSW, cosine distance)."""

    def __init__(self, pool: Database) -> None:
        self._pool = pool

    @staticmethod
    def _table(collection: str) -> str:
        try:
            return _TABLES[collection]
        except KeyError:
            raise ValueError(f"unknown vector collection {collection!r}") from None

    async def upsert(
        self, collection: str, model: str, items: Sequence[VectorItem], *, conn: Any = None
    ) -> None:
        table = self._table(collection)
        rows: list[tuple[Any, ...]]
        if collection == "visual":  # the clip too: a search's scan joins clips without going through keyframes
            sql = (
                f"INSERT INTO {table} (id, video_id, owner_id, model, embedding, clip_id) "
                "VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (id) DO UPDATE SET video_id = EXCLUDED.video_id, owner_id = EXCLUDED.owner_id, "
                "model = EXCLUDED.model, embedding = EXCLUDED.embedding, clip_id = EXCLUDED.clip_id"
            )
            rows = [(i.id, i.video_id, i.owner_id, model, np.asarray(i.vector, dtype=np.float32), i.clip_id or i.id)
                    for i in items]
        else:
            sql = (
                f"INSERT INTO {table} (id, video_id, owner_id, model, embedding) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (id) DO UPDATE SET video_id = EXCLUDED.video_id, owner_id = EXCLUDED.owner_id, "
                "model = EXCLUDED.model, embedding = EXCLUDED.embedding"
            )
            rows = [(i.id, i.video_id, i.owner_id, model, np.asarray(i.vector, dtype=np.float32)) for i in items]
        if conn is not None:  # the caller's transaction (a pool connection)
            await conn.executemany(sql, rows)
        else:
            async with self._pool.acquire() as c:
                await c.executemany(sql, rows)

    async def clip_visual(self, clip_id: uuid.UUID) -> tuple[str, np.ndarray] | None:
        """What a clip looks like: the mean of its keyframes' CLIP vectors, normalized (a scene has one keyframe
        per few seconds), and their model; None when it has none. Keyframes of an older model than the clip's
        newest are left out (a video is reindexed as a whole, so they do not mix in practice)."""
        rows = await self._pool.fetch(
            "SELECT x.model, x.embedding FROM visual_vectors x JOIN keyframes k ON k.id = x.id "
            "WHERE k.clip_id = $1 ORDER BY k.idx", clip_id)
        if not rows:
            return None
        model = rows[-1]["model"]
        matrix = np.stack([_array(r["embedding"]) for r in rows if r["model"] == model])
        mean = matrix.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return model, (mean / norm if norm > 0 else matrix[0]).astype(np.float32)

    async def get(self, collection: str, item_id: uuid.UUID) -> tuple[str, np.ndarray] | None:
        row = await self._pool.fetchrow(
            f"SELECT model, embedding FROM {self._table(collection)} WHERE id = $1", item_id
        )
        if row is None:
            return None
        return row["model"], _array(row["embedding"])


def _array(embedding: Any) -> np.ndarray:
    values = embedding.to_numpy() if hasattr(embedding, "to_numpy") else embedding
    return np.asarray(values, dtype=np.float32)
