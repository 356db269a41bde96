"""Reports over the search log and the interactions: search figures, popular queries, popular clips.

Every report covers a half-open window ``[start, end)`` and one user's records (``user``) or everyone's (None:
administrators). A logged search is one answered Search call (each page of results is one, with its own search
id, as clients report interactions against it). Figures:

- click-through rate: searches with at least one click / searches;
- mean reciprocal rank: the mean over searches of 1 / the rank of the search's first click (0 without a click);
- zero-result rate: searches that found nothing / searches; latency percentiles of the search service's time.

Search figures come from hourly rollups (migration 0003: per user and for everyone, kept current by logging a
search and by its first click) for the window's whole hours, and from the raw rows for its partial first and last
hours: exact counts, latency percentiles within 7.3 % (a histogram of 15 % buckets). Popular queries and clips come
from daily rollups (per user and for everyone, per query or clip) for the window's whole days and from the raw rows
for its partial first and last days.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.analytics.windows import WHOLE_DAYS, floor_day, floor_hour, split_window
from services.common.db import Database


@dataclass(frozen=True)
class SearchStats:
    searches: int
    unique_users: int
    clicked_searches: int
    zero_result_searches: int
    reciprocal_rank_sum: float
    latency_ms: tuple[float, float, float]  # p50, p95, p99 (0 without searches)

    @property
    def click_through_rate(self) -> float:
        return self.clicked_searches / self.searches if self.searches else 0.0

    @property
    def zero_result_rate(self) -> float:
        return self.zero_result_searches / self.searches if self.searches else 0.0

    @property
    def mean_reciprocal_rank(self) -> float:
        return self.reciprocal_rank_sum / self.searches if self.searches else 0.0


@dataclass(frozen=True)
class PopularQuery:
    query: str
    searches: int
    clicks: int
    clicked_searches: int
    zero_result_searches: int


@dataclass(frozen=True)
class PopularClip:
    clip_id: uuid.UUID
    clicks: int
    impressions: int
    plays: int
    watched_seconds: float


# The latency histogram's buckets (migration 0003's ``latency_bucket``): bucket k holds [R^k, R^(k+1)) ms.
LATENCY_RATIO = 1.15


def _quantile(histogram: list[tuple[int, int]], q: float) -> float:
    """The ``q`` quantile (ms) of a latency histogram, as its bucket's geometric middle: within 7.3 % of the
    exact value (half a bucket: a factor of 1.15 ** 0.5), 0 without searches."""
    total = sum(n for _, n in histogram)
    if not total:
        return 0.0
    seen, wanted = 0, max(1, math.ceil(q * total))
    for bucket, n in histogram:
        seen += n
        if seen >= wanted:
            return float(LATENCY_RATIO ** (bucket + 0.5))
    return float(LATENCY_RATIO ** (histogram[-1][0] + 0.5))


class Reports:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search_stats(self, start: datetime | None, end: datetime | None,
                           user: uuid.UUID | None) -> SearchStats:
        """The window's whole hours from the rollups, its partial first and last hours from the raw rows."""
        args, edges, mine = split_window(start, end, user, "search_time", floor_hour, timedelta(hours=1))
        edges = f"{edges} {mine}"
        hours = f"hour >= $3 AND hour < $4 {mine}"
        row = await self._db.fetchrow(
            f"""WITH roll AS (
                    SELECT coalesce(sum(searches), 0) AS s, coalesce(sum(zero_results), 0) AS z,
                           coalesce(sum(clicked), 0) AS c, coalesce(sum(rr_sum), 0) AS rr
                      FROM {"search_hours" if user is not None else "search_hours_all"} WHERE {hours}),
                edge AS (
                    SELECT count(*) AS s, count(*) FILTER (WHERE result_count = 0) AS z,
                           count(*) FILTER (WHERE click_count > 0) AS c,
                           coalesce(sum(1.0 / first_click_rank) FILTER (WHERE first_click_rank > 0), 0) AS rr
                      FROM searches WHERE {edges}),
                users AS (
                    SELECT count(*) AS n FROM (SELECT user_id FROM search_hours WHERE {hours}
                                               UNION SELECT user_id FROM searches WHERE {edges}) u)
                SELECT (roll.s + edge.s)::bigint AS searches, (roll.z + edge.z)::bigint AS zero,
                       (roll.c + edge.c)::bigint AS clicked, (roll.rr + edge.rr)::float8 AS rr, users.n AS users
                  FROM roll, edge, users""", *args)
        histogram = await self._db.fetch(
            f"""SELECT bucket, sum(n)::bigint AS n FROM (
                    SELECT bucket, searches AS n FROM {"latency_hours" if user is not None else "latency_hours_all"}
                     WHERE {hours}
                    UNION ALL
                    SELECT latency_bucket(latency_ms), 1 FROM searches WHERE {edges}) x
                 GROUP BY bucket ORDER BY bucket""", *args)
        assert row is not None
        counts = [(r["bucket"], r["n"]) for r in histogram]
        return SearchStats(row["searches"], row["users"], row["clicked"], row["zero"], row["rr"],
                           (_quantile(counts, 0.5), _quantile(counts, 0.95), _quantile(counts, 0.99)))

    async def popular_queries(self, start: datetime | None, end: datetime | None, user: uuid.UUID | None,
                              *, offset: int, limit: int) -> list[PopularQuery]:
        """Text queries by how often they were searched (normalized form), most first; image queries are not
        queries here. Whole days from the daily rollups, the window's partial days from the raw rows."""
        args, edges, mine = split_window(start, end, user, "search_time", floor_day, timedelta(days=1))
        args += [limit, offset]
        rows = await self._db.fetch(
            f"""SELECT q, sum(s)::bigint AS searches, sum(c)::bigint AS clicks, sum(cl)::bigint AS clicked,
                       sum(z)::bigint AS zero FROM (
                    SELECT normalized_query AS q, searches AS s, clicks AS c, clicked AS cl, zero_results AS z
                      FROM {"query_days" if user is not None else "query_days_all"} WHERE {WHOLE_DAYS} {mine}
                    UNION ALL
                    SELECT normalized_query, 1, click_count, (click_count > 0)::int, (result_count = 0)::int
                      FROM searches WHERE {edges} {mine} AND normalized_query <> '') x
                 GROUP BY q ORDER BY searches DESC, q
                 LIMIT ${len(args) - 1} OFFSET ${len(args)}""", *args)
        return [PopularQuery(r["q"], r["searches"], r["clicks"], r["clicked"], r["zero"]) for r in rows]

    async def popular_clips(self, start: datetime | None, end: datetime | None, user: uuid.UUID | None,
                            *, offset: int, limit: int) -> list[PopularClip]:
        """Clips by clicks, then impressions, most first; whole days from the daily rollups."""
        args, edges, mine = split_window(start, end, user, "create_time", floor_day, timedelta(days=1))
        args += [limit, offset]
        rows = await self._db.fetch(
            f"""SELECT clip_id, sum(c)::bigint AS clicks, sum(i)::bigint AS impressions, sum(p)::bigint AS plays,
                       sum(w)::float8 AS watched FROM (
                    SELECT clip_id, clicks AS c, impressions AS i, plays AS p, watched_seconds AS w
                      FROM {"clip_days" if user is not None else "clip_days_all"} WHERE {WHOLE_DAYS} {mine}
                    UNION ALL
                    SELECT clip_id, (type = 'CLICK')::int, (type = 'IMPRESSION')::int, (type = 'PLAY')::int,
                           watched_seconds
                      FROM interactions WHERE {edges} {mine}) x
                 GROUP BY clip_id ORDER BY clicks DESC, impressions DESC, clip_id
                 LIMIT ${len(args) - 1} OFFSET ${len(args)}""", *args)
        return [PopularClip(r["clip_id"], r["clicks"], r["impressions"], r["plays"], r["watched"]) for r in rows]
