"""The pgvector implementation (HNSW, cosine) of the ``ports.VectorIndex`` Protocol: the write side of the vectors.

An index holds one vector per item id in a named collection ("transcript": SBERT 384-d, "visual": CLIP 512-d).
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

    async def get(self, collection: str, item_id: uuid.UUID) -> tuple[str, np.ndarray] | None:
        row = await self._pool.fetchrow(
            f"SELECT model, embedding FROM {self._table(collection)} WHERE id = $1", item_id
        )
        if row is None:
            return None
        embedding = row["embedding"]
        values = embedding.to_numpy() if hasattr(embedding, "to_numpy") else embedding
        return row["model"], np.asarray(values, dtype=np.float32)
