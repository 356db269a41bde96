"""The search log: who searched what, when, how fast, and what was ranked (analytics owns it).

Searches arrive from the search service through ``AnalyticsInternalService.LogSearches``, possibly more
than once (its outbox delivers at least once): recording is idempotent by search id.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from services.common.db import Database

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


class SearchLogStore:
    """asyncpg repository of ``searches`` and ``search_results`` in the analytics schema."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, searches: Sequence[LoggedSearch], *, caller: str = "") -> int:
        """Insert the searches not logged yet (with their results) in one transaction; returns how many."""
        logged = 0
        async with self._db.acquire() as conn, conn.transaction():
            for s in searches:
                inserted = await conn.fetchval(
                    "INSERT INTO searches (id, query, image_query, result_count, latency_ms, page_offset, "
                    "search_time, caller, user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                    "ON CONFLICT (id) DO NOTHING RETURNING id",
                    s.id, s.query, s.image_query, s.result_count, s.latency_ms, s.page_offset, s.search_time,
                    caller, s.user_id,
                )
                if inserted is None:  # delivered before
                    continue
                logged += 1
                if s.results:
                    await conn.executemany(
                        "INSERT INTO search_results (search_id, rank, clip_id, video_id, score) "
                        "VALUES ($1, $2, $3, $4, $5)",
                        [(s.id, r.rank, r.clip_id, r.video_id, r.score) for r in s.results],
                    )
        return logged

    async def count(self) -> int:
        return int(await self._db.fetchval("SELECT count(*) FROM searches"))
