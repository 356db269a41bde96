"""The search log: who searched what, when, how fast, and what was ranked (analytics owns it).

Searches arrive from the search service through ``AnalyticsInternalService.LogSearches``, possibly more
than once (its outbox delivers at least once): recording is idempotent by search id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services.common.db import Database
from services.common.errors import NotFound
from services.common.query_text import normalized_query

SCHEMA = "analytics"
MIGRATIONS = Path(__file__).parent / "migrations"
# The user of searches logged before the log recorded who searched (migration 0002's default).
NO_USER = uuid.UUID(int=0)


@dataclass(frozen=True)
class LoggedResult:
    clip_id: uuid.UUID
    video_id: uuid.UUID
    rank: int
    score: float


@dataclass(frozen=True)
class LoggedSearch:
    id: uuid.UUID
    query: str
    image_query: bool
    result_count: int
    latency_ms: float
    search_time: datetime
    page_offset: int = 0
    results: tuple[LoggedResult, ...] = field(default_factory=tuple)
    user_id: uuid.UUID = NO_USER  # who searched (``NO_USER``: logged before searches had a user)
    fusion: str = ""  # "weighted" or "rrf" ("" when not sent)
    filters: dict[str, Any] = field(default_factory=dict)  # the search's filters as JSON ({} for none)


# The new searches (``$1``, their ids) added to the rollups of migration 0003 (see there).
_ROLLUPS = (
    """INSERT INTO search_hours (user_id, hour, searches, zero_results)
       SELECT user_id, date_trunc('hour', search_time, 'UTC'), count(*), count(*) FILTER (WHERE result_count = 0)
         FROM searches WHERE id = ANY($1::uuid[]) GROUP BY 1, 2 ORDER BY 1, 2
       ON CONFLICT (user_id, hour) DO UPDATE SET searches = search_hours.searches + EXCLUDED.searches,
           zero_results = search_hours.zero_results + EXCLUDED.zero_results""",
    """INSERT INTO search_hours_all (hour, searches, zero_results)
       SELECT date_trunc('hour', search_time, 'UTC'), count(*), count(*) FILTER (WHERE result_count = 0)
         FROM searches WHERE id = ANY($1::uuid[]) GROUP BY 1 ORDER BY 1
       ON CONFLICT (hour) DO UPDATE SET searches = search_hours_all.searches + EXCLUDED.searches,
           zero_results = search_hours_all.zero_results + EXCLUDED.zero_results""",
    """INSERT INTO latency_hours (user_id, hour, bucket, searches)
       SELECT user_id, date_trunc('hour', search_time, 'UTC'), latency_bucket(latency_ms), count(*)
         FROM searches WHERE id = ANY($1::uuid[]) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
       ON CONFLICT (user_id, hour, bucket) DO UPDATE SET searches = latency_hours.searches + EXCLUDED.searches""",
    """INSERT INTO latency_hours_all (hour, bucket, searches)
       SELECT date_trunc('hour', search_time, 'UTC'), latency_bucket(latency_ms), count(*)
         FROM searches WHERE id = ANY($1::uuid[]) GROUP BY 1, 2 ORDER BY 1, 2
       ON CONFLICT (hour, bucket) DO UPDATE SET searches = latency_hours_all.searches + EXCLUDED.searches""",
    """INSERT INTO query_days (user_id, day, normalized_query, searches, zero_results)
       SELECT user_id, (search_time AT TIME ZONE 'UTC')::date, normalized_query, count(*),
              count(*) FILTER (WHERE result_count = 0)
         FROM searches WHERE id = ANY($1::uuid[]) AND normalized_query <> '' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
       ON CONFLICT (user_id, day, normalized_query) DO UPDATE SET searches = query_days.searches + EXCLUDED.searches,
           zero_results = query_days.zero_results + EXCLUDED.zero_results""",
    """INSERT INTO query_days_all (day, normalized_query, searches, zero_results)
       SELECT (search_time AT TIME ZONE 'UTC')::date, normalized_query, count(*),
              count(*) FILTER (WHERE result_count = 0)
         FROM searches WHERE id = ANY($1::uuid[]) AND normalized_query <> '' GROUP BY 1, 2 ORDER BY 1, 2
       ON CONFLICT (day, normalized_query) DO UPDATE SET searches = query_days_all.searches + EXCLUDED.searches,
           zero_results = query_days_all.zero_results + EXCLUDED.zero_results""",
)


class SearchLogStore:
    """asyncpg repository of ``searches`` and ``search_results`` in the analytics schema."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, searches: Sequence[LoggedSearch], *, caller: str = "") -> int:
        """Insert the searches not logged yet (with their results), adding them to the hourly rollups, in one
        transaction; returns how many."""
        new: list[uuid.UUID] = []
        async with self._db.acquire() as conn, conn.transaction():
            for s in searches:
                inserted = await conn.fetchval(
                    "INSERT INTO searches (id, query, image_query, result_count, latency_ms, page_offset, "
                    "search_time, caller, user_id, normalized_query, fusion, filters) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb) "
                    "ON CONFLICT (id) DO NOTHING RETURNING id",
                    s.id, s.query, s.image_query, s.result_count, s.latency_ms, s.page_offset, s.search_time,
                    caller, s.user_id, normalized_query(s.query), s.fusion, json.dumps(s.filters),
                )
                if inserted is None:  # delivered before
                    continue
                new.append(s.id)
                if s.results:
                    await conn.executemany(
                        "INSERT INTO search_results (search_id, rank, clip_id, video_id, score) "
                        "VALUES ($1, $2, $3, $4, $5)",
                        [(s.id, r.rank, r.clip_id, r.video_id, r.score) for r in s.results],
                    )
            if new:
                for sql in _ROLLUPS:  # in a fixed order, rows sorted: concurrent batches cannot deadlock
                    await conn.execute(sql, new)
        return len(new)

    async def results(self, search_id: uuid.UUID, *, user: uuid.UUID | None) -> list[LoggedResult]:
        """The ranked results search ``search_id`` logged, if it is ``user``'s (None: anyone's); NOT_FOUND
        otherwise, the same for another user's search as for none."""
        found = await self._db.fetchval(
            "SELECT true FROM searches WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)", search_id, user)
        if not found:
            raise NotFound(f"search {search_id} not found", reason="SEARCH_NOT_FOUND",
                           metadata={"search_id": str(search_id)})
        rows = await self._db.fetch(
            "SELECT clip_id, video_id, rank, score FROM search_results WHERE search_id = $1 ORDER BY rank", search_id)
        return [LoggedResult(r["clip_id"], r["video_id"], r["rank"], r["score"]) for r in rows]

    async def count(self) -> int:
        return int(await self._db.fetchval("SELECT count(*) FROM searches"))
