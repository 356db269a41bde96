"""The pgvector implementation (HNSW, cosine) of the ``ports.VectorIndex`` Protocol.

An index holds one vector per item id in a named collection ("transcript": SBERT 384-d). Each vector
records the model that made it and the user who owns it; queries only see vectors of the model asked for, so
a changed model is never mixed silently with old vectors, and only the caller's own unless they see everyone's.

Filtered nearest-neighbour search without iterative index scans. pgvector 0.6 (the version this deployment
runs) filters *after* the HNSW scan: the scan yields at most ``hnsw.ef_search`` candidates of every owner and
model, and the filter keeps the caller's. A user who owns 1 % of the vectors would get about 1 % of
``ef_search`` back: an empty or starved page. So each owner-filtered query chooses its plan by selectivity, as
vector databases do (Weaviate's and Qdrant's "flat search below a cutoff"):

* **few vectors** (``exact_scan_max_rows``, by default ``EXACT_SCAN_MAX_ROWS``): rank all of the owner's vectors
  of that model exactly. The btree index on (owner_id, model) finds them and the HNSW path is disabled for the
  statement; exact, and cheap at that size (3 ms for 100 rows, 11 ms for 1,000, 65 ms for 10,000);
* **many vectors**: HNSW with ``hnsw.ef_search`` raised in proportion to how small the owner's share is (the
  scan must see about ``top_k / share`` candidates for ``top_k`` of them to survive the filter), capped at
  ``EF_SEARCH_MAX``; when the share is too small for even the cap to be expected to give ``top_k``, or the
  filter still leaves fewer, the exact scan answers instead.

Administrators and the system (no owner filter) keep the unfiltered HNSW path.
"""

from __future__ import annotations

import collections
import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.db import Database
from services.search.ports import VectorHit, VectorItem

_TABLES = {"transcript": "transcript_vectors", "visual": "visual_vectors"}

# Up to this many vectors of one owner in one model, a query ranks them all exactly instead of using HNSW.
# Measured (bench/filtered_search.py, 100,000 512-d vectors, PG 16 + pgvector 0.6, 2 cores): exact ranking
# costs ~6.6 µs a row (each vector is read from TOAST), 10,000 rows ~65 ms; an HNSW scan at ef_search 1000
# ~35 ms, the unfiltered one ~10 ms. Up to 10,000 rows the exact answer costs at most about two HNSW scans and
# is always right; above it HNSW is tried first when the owner's share lets it find top_k (else exact anyway).
EXACT_SCAN_MAX_ROWS = 10_000
# pgvector's own ceiling of hnsw.ef_search; beyond it an HNSW scan costs more than it saves.
EF_SEARCH_MAX = 1000
# The HNSW path asks for this many times the candidates it needs in expectation (owner's vectors are not
# spread evenly over the graph), so that the exact fallback is rare.
EF_MARGIN = 2.0

_NEAREST_SQL = ("SELECT id, video_id, 1 - (embedding <=> $1) AS score FROM {table} "
             "WHERE {where} ORDER BY embedding <=> $1 LIMIT $3")


class PgVectorIndex:
    """pgvector tables in the metadata database (HNSW, cosine distance).

    ``path_counts`` counts the retrieval paths taken (``hnsw``, ``exact``, ``owner_hnsw``,
    ``owner_hnsw_fallback``, ``owner_none``): what a metric or a test reads to see how queries were answered."""

    def __init__(self, pool: Database, ef_search: int = 100, *,
                 exact_scan_max_rows: int = EXACT_SCAN_MAX_ROWS) -> None:
        self._pool = pool
        self._ef_search = ef_search
        self._exact_max = exact_scan_max_rows
        self.path_counts: collections.Counter[str] = collections.Counter()

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

    async def query(
        self,
        collection: str,
        model: str,
        vector: np.ndarray,
        top_k: int,
        video_ids: Sequence[uuid.UUID] | None = None,
        *,
        owner: uuid.UUID | None,
    ) -> list[VectorHit]:
        """The ``top_k`` nearest items of ``model`` owned by ``owner`` (None: everyone's) and, with ``video_ids``,
        of those videos; the plan is chosen per query (module docstring)."""
        table = self._table(collection)
        vec = np.asarray(vector, dtype=np.float32)
        async with self._pool.acquire() as conn, conn.transaction():
            if video_ids:
                # A video filter is selective: its rows come from the btree index on video_id, ranked exactly.
                self.path_counts["exact"] += 1
                return await self._exact(conn, table, vec, model, top_k, owner, video_ids)
            if owner is None:
                self.path_counts["hnsw"] += 1
                return await self._hnsw(conn, table, vec, model, top_k, None, max(self._ef_search, top_k))
            # Index-only on (owner_id, model): O(owner's rows), far cheaper than ranking them.
            owned = int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE owner_id = $1 AND model = $2",
                                            owner, model))
            if owned == 0:
                self.path_counts["owner_none"] += 1
                return []
            ef = await self._owner_ef(conn, table, owned, top_k)
            if owned <= self._exact_max or ef is None:
                self.path_counts["exact"] += 1
                return await self._exact(conn, table, vec, model, top_k, owner, None)
            hits = await self._hnsw(conn, table, vec, model, top_k, owner, ef)
            if len(hits) >= min(top_k, owned):
                self.path_counts["owner_hnsw"] += 1
                return hits
            # The post-filter left too few (the owner's vectors are sparse where this query lands): exact.
            self.path_counts["owner_hnsw_fallback"] += 1
            return await self._exact(conn, table, vec, model, top_k, owner, None)

    async def _owner_ef(self, conn: Any, table: str, owned: int, top_k: int) -> int | None:
        """``hnsw.ef_search`` for an owner with ``owned`` vectors: ``top_k / share`` with a margin, at least the
        usual; None when even ``EF_SEARCH_MAX`` cannot be expected to leave ``top_k`` after the owner filter
        (the scan would be wasted: rank exactly instead). The share is of the whole table, every model: the HNSW
        index holds them all. The table's size is the planner's estimate (no count of a large table per query);
        unknown (never analyzed) counts as a small share."""
        total = float(await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = $1::text::regclass", table))
        if total <= 0:
            return None
        share = min(1.0, owned / total)
        if EF_SEARCH_MAX * share < top_k:
            return None
        return min(EF_SEARCH_MAX, max(self._ef_search, top_k, math.ceil(EF_MARGIN * top_k / share)))

    @staticmethod
    async def _hnsw(conn: Any, table: str, vec: np.ndarray, model: str, top_k: int, owner: uuid.UUID | None,
                    ef: int) -> list[VectorHit]:
        where, args = "model = $2", [vec, model, top_k]
        if owner is not None:
            where += " AND owner_id = $4"
            args.append(owner)
        await conn.execute(f"SET LOCAL hnsw.ef_search = {min(EF_SEARCH_MAX, ef)}")
        rows = await conn.fetch(_NEAREST_SQL.format(table=table, where=where), *args)
        return [VectorHit(r["id"], r["video_id"], float(r["score"])) for r in rows]

    @staticmethod
    async def _exact(conn: Any, table: str, vec: np.ndarray, model: str, top_k: int, owner: uuid.UUID | None,
                     video_ids: Sequence[uuid.UUID] | None) -> list[VectorHit]:
        """Every matching row ranked by exact distance: index scans are off for the statement, so the HNSW index
        cannot be used (it would post-filter) and the rows come from a bitmap scan of the btree indexes on
        (owner_id, model) or video_id, then a top-k sort."""
        where, args = ["model = $2"], [vec, model, top_k]
        if owner is not None:
            args.append(owner)
            where.append(f"owner_id = ${len(args)}")
        if video_ids:
            args.append(list(video_ids))
            where.append(f"video_id = ANY(${len(args)}::uuid[])")
        await conn.execute("SET LOCAL enable_indexscan = off")
        rows = await conn.fetch(_NEAREST_SQL.format(table=table, where=" AND ".join(where)), *args)
        return [VectorHit(r["id"], r["video_id"], float(r["score"])) for r in rows]

    async def scores(
        self, collection: str, model: str, vector: np.ndarray, ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, float]:
        """Exact cosine similarity of ``vector`` to the given items (those of ``model`` only). The ids come from
        owner-filtered queries; no owner filter is needed here."""
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
