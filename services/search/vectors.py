"""The pgvector implementation (HNSW, cosine) of the ``ports.VectorIndex`` Protocol.

An index holds one vector per item id in a named collection ("transcript": SBERT 384-d). Each vector
records the model that made it; queries only see vectors of the model asked for, so a changed model is
never mixed silently with old vectors.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.db import Database
from services.search.ports import VectorHit, VectorItem

_TABLES = {"transcript": "transcript_vectors", "visual": "visual_vectors"}


class PgVectorIndex:
    """pgvector tables in the metadata database (HNSW, cosine distance)."""

    def __init__(self, pool: Database, ef_search: int = 100) -> None:
        self._pool = pool
        self._ef_search = ef_search

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
            f"INSERT INTO {table} (id, video_id, model, embedding) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (id) DO UPDATE SET video_id = EXCLUDED.video_id, model = EXCLUDED.model, "
            "embedding = EXCLUDED.embedding"
        )
        rows = [(i.id, i.video_id, model, np.asarray(i.vector, dtype=np.float32)) for i in items]
        if conn is not None:  # the caller's transaction (a pool connection)
            await conn.executemany(sql, rows)
        else:
            async with self._pool.acquire() as c:
                await c.executemany(sql, rows)

    async def query(
        self,
        collection: str,
        model: str,
        vector: np.ndarray,
        top_k: int,
        video_ids: Sequence[uuid.UUID] | None = None,
    ) -> list[VectorHit]:
        table = self._table(collection)
        vec = np.asarray(vector, dtype=np.float32)
        where = "model = $2"
        args: list[object] = [vec, model, top_k]
        if video_ids:
            where += " AND video_id = ANY($4::uuid[])"
            args.append(list(video_ids))
        sql = (
            f"SELECT id, video_id, 1 - (embedding <=> $1) AS score FROM {table} "
            f"WHERE {where} ORDER BY embedding <=> $1 LIMIT $3"
        )
        async with self._pool.acquire() as conn, conn.transaction():
            if video_ids:
                # pgvector 0.6 filters after the HNSW scan, which could leave a selective filter with no
                # rows: for a video filter scan exactly (the video's rows come from the btree index).
                await conn.execute("SET LOCAL enable_indexscan = off")
            else:
                await conn.execute(f"SET LOCAL hnsw.ef_search = {min(1000, max(self._ef_search, top_k))}")
            rows = await conn.fetch(sql, *args)
        return [VectorHit(r["id"], r["video_id"], float(r["score"])) for r in rows]

    async def scores(
        self, collection: str, model: str, vector: np.ndarray, ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, float]:
        """Exact cosine similarity of ``vector`` to the given items (those of ``model`` only)."""
        if not ids:
            return {}
        rows = await self._pool.fetch(
            f"SELECT id, 1 - (embedding <=> $1) AS score FROM {self._table(collection)} "
            "WHERE id = ANY($2::uuid[]) AND model = $3",
            np.asarray(vector, dtype=np.float32), list(ids), model,
        )
        return {r["id"]: float(r["score"]) for r in rows}

    async def get(self, collection: str, item_id: uuid.UUID) -> tuple[str, np.ndarray] | None:
        row = await self._pool.fetchrow(
            f"SELECT model, embedding FROM {self._table(collection)} WHERE id = $1", item_id
        )
        if row is None:
            return None
        embedding = row["embedding"]
        values = embedding.to_numpy() if hasattr(embedding, "to_numpy") else embedding
        return row["model"], np.asarray(values, dtype=np.float32)
