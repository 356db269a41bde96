"""Usage: what each user consumed — videos stored and deleted, processing, searches, compilations — recorded from
the facts other services commit (``AnalyticsInternalService.RecordUsage``, through their outboxes) and reported by
GetUsage over a window, in all and per day, week or month.

Recording is idempotent by the producer's event id (its outbox delivers at least once) and adds each new event to
the daily rollup (migration 0004: per user, and for everyone under ``EVERYONE``) in the same transaction. A report
reads the window's whole days from the rollup and its partial first and last days from the raw events (as the
search reports do, ``windows.split_window``); searches come from the search log's hourly rollups. What is stored
at the end of the window (videos, bytes) is every upload before it less every deletion.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from services.analytics.windows import WHOLE_DAYS, floor_day, floor_hour, split_window
from services.common.db import Database

# The rollup's row for everyone's usage (no user has the all-ones UUID).
EVERYONE = uuid.UUID(int=2**128 - 1)
KINDS = ("VIDEO_UPLOADED", "VIDEO_DELETED", "VIDEO_PROCESSED", "PROCESSING_RUN", "COMPILATION_RENDERED")
PERIODS = ("day", "week", "month")
MAX_PERIODS = 1000


@dataclass(frozen=True)
class UsageEvent:
    id: uuid.UUID
    user_id: uuid.UUID
    kind: str  # one of KINDS
    event_time: datetime
    video_id: uuid.UUID | None = None
    bytes: int = 0
    seconds: float = 0.0


# Each column of the daily rollup as an expression on one raw event: the rollup and a window's partial days are
# summed from the same definitions.
_EVENT_COLUMNS = {
    "uploads": "(kind = 'VIDEO_UPLOADED')::int",
    "uploaded_bytes": "CASE WHEN kind = 'VIDEO_UPLOADED' THEN bytes ELSE 0 END",
    "deletions": "(kind = 'VIDEO_DELETED')::int",
    "deleted_bytes": "CASE WHEN kind = 'VIDEO_DELETED' THEN bytes ELSE 0 END",
    "processed": "(kind = 'VIDEO_PROCESSED')::int",
    "processed_seconds": "CASE WHEN kind = 'VIDEO_PROCESSED' THEN seconds ELSE 0 END",
    "processing_seconds": "CASE WHEN kind = 'PROCESSING_RUN' THEN seconds ELSE 0 END",
    "compilations": "(kind = 'COMPILATION_RENDERED')::int",
}
_SECONDS = frozenset({"processed_seconds", "processing_seconds"})
_COLUMNS = ", ".join(_EVENT_COLUMNS)
_SUMS = ", ".join(f"sum({c})::{'float8' if c in _SECONDS else 'bigint'} AS {c}" for c in _EVENT_COLUMNS)


def _bucket(n: int) -> str:
    """The period (``$n``: day, week, month, or NULL for none) of a row's time ``t``: its start, or NULL."""
    return f"CASE WHEN ${n}::text IS NULL THEN NULL ELSE date_trunc(${n}::text, t, 'UTC') END"

# The new events (``$1``, their ids) added to their users' days and to everyone's (``$2``).
_ROLLUP = f"""
    INSERT INTO usage_days (user_id, day, {_COLUMNS})
    SELECT who.u, (event_time AT TIME ZONE 'UTC')::date, {", ".join(f"sum({e})" for e in _EVENT_COLUMNS.values())}
      FROM usage_events, LATERAL (VALUES (user_id), ($2::uuid)) AS who (u)
     WHERE id = ANY($1::uuid[]) GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (user_id, day) DO UPDATE SET {", ".join(f"{c} = usage_days.{c} + EXCLUDED.{c}" for c in _EVENT_COLUMNS)}
"""


@dataclass
class UsageFigures:
    """Usage over a stretch of time; ``stored_*`` are what was stored at its end."""

    searches: int = 0
    uploads: int = 0
    uploaded_bytes: int = 0
    deletions: int = 0
    deleted_bytes: int = 0
    processed: int = 0
    processed_seconds: float = 0.0
    processing_seconds: float = 0.0
    compilations: int = 0
    stored_videos: int = 0
    stored_bytes: int = 0

    def add(self, other: UsageFigures) -> None:
        for f in fields(self):
            if not f.name.startswith("stored_"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class UsagePeriod:
    start: datetime
    end: datetime
    figures: UsageFigures


@dataclass
class UsageReport:
    start: datetime
    end: datetime
    totals: UsageFigures
    periods: list[UsagePeriod] = field(default_factory=list)


def period_start(at: datetime, period: str) -> datetime:
    """The start of the UTC ``period`` (day, ISO week, month) holding ``at``: PostgreSQL's ``date_trunc``."""
    day = floor_day(at)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}")


def next_period(start: datetime, period: str) -> datetime:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    if period == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    raise ValueError(f"unknown period {period!r}")


class TooManyPeriods(ValueError):
    pass


def period_bounds(start: datetime, end: datetime, period: str) -> list[tuple[datetime, datetime]]:
    """The ``period``s of ``[start, end)``, the first and last cut at the window; at most ``MAX_PERIODS``
    (``TooManyPeriods`` past it)."""
    bounds: list[tuple[datetime, datetime]] = []
    at = period_start(start, period)
    while at < end and start < end:
        if len(bounds) == MAX_PERIODS:
            raise TooManyPeriods(f"the window holds more than {MAX_PERIODS} periods of a {period}")
        after = next_period(at, period)
        bounds.append((max(at, start), min(after, end)))
        at = after
    return bounds


class UsageStore:
    """asyncpg repository of ``usage_events`` and their daily rollup, and the usage report."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, events: Sequence[UsageEvent], *, caller: str = "") -> int:
        """Insert the events not recorded yet and add them to the daily rollup, in one transaction; returns how
        many were new."""
        async with self._db.acquire() as conn, conn.transaction():
            new = await conn.fetch(
                "INSERT INTO usage_events (id, user_id, kind, event_time, video_id, bytes, seconds, caller) "
                "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[], "
                "$6::bigint[], $7::float8[], $8::text[]) ON CONFLICT (id) DO NOTHING RETURNING id",
                [e.id for e in events], [e.user_id for e in events], [e.kind for e in events],
                [e.event_time for e in events], [e.video_id for e in events], [e.bytes for e in events],
                [e.seconds for e in events], [caller] * len(events),
            )
            if new:
                await conn.execute(_ROLLUP, [r["id"] for r in new], EVERYONE)
        return len(new)

    async def report(self, start: datetime | None, end: datetime | None, user: uuid.UUID | None,
                     period: str | None) -> UsageReport:
        """``user``'s usage (None: everyone's) over ``[start, end)``: ``end`` unset is now, ``start`` unset the
        first record of theirs (usage or search). Per ``period`` too when given (TooManyPeriods past
        ``MAX_PERIODS``)."""
        end = end or datetime.now(UTC)
        if start is None:
            start = await self._first_record(user) or end
        end = max(start, end)
        bounds = period_bounds(start, end, period) if period else []
        flows = await self._flows(start, end, user, period)
        searches = await self._searches(start, end, user, period)
        videos, size = await self._stored_before(start, user)
        spans = bounds if period else [(start, end)]
        totals, periods = UsageFigures(), []
        for lo, hi in spans:
            key = period_start(lo, period) if period else None  # the rows' period (date_trunc), or the one row
            part = UsageFigures(searches=searches.get(key, 0), **flows.get(key, {}))
            totals.add(part)
            videos += part.uploads - part.deletions
            size += part.uploaded_bytes - part.deleted_bytes
            part.stored_videos, part.stored_bytes = videos, size
            periods.append(UsagePeriod(lo, hi, part))
        totals.stored_videos, totals.stored_bytes = videos, size
        return UsageReport(start, end, totals, periods if period else [])

    async def _first_record(self, user: uuid.UUID | None) -> datetime | None:
        mine = "WHERE user_id = $1" if user is not None else ""
        args = [user] if user is not None else []
        first: datetime | None = await self._db.fetchval(
            f"SELECT least((SELECT min(event_time) FROM usage_events {mine}), "
            f"(SELECT min(search_time) FROM searches {mine}))", *args)
        return first

    async def _flows(self, start: datetime, end: datetime, user: uuid.UUID | None,
                     period: str | None) -> dict[datetime | None, dict[str, Any]]:
        """Uploads, deletions, processing and compilations per period start (``None`` without periods)."""
        args, edges, mine = split_window(start, end, user, "event_time", floor_day, timedelta(days=1))
        args += [user or EVERYONE, period]
        rows = await self._db.fetch(
            f"""SELECT {_bucket(len(args))} AS p, {_SUMS} FROM (
                    SELECT day::timestamp AT TIME ZONE 'UTC' AS t, {_COLUMNS}
                      FROM usage_days WHERE user_id = ${len(args) - 1} AND {WHOLE_DAYS}
                    UNION ALL
                    SELECT event_time, {", ".join(_EVENT_COLUMNS.values())}
                      FROM usage_events WHERE {edges} {mine}) x
                 GROUP BY 1""", *args)
        return {r["p"]: {c: r[c] for c in _EVENT_COLUMNS} for r in rows}

    async def _searches(self, start: datetime, end: datetime, user: uuid.UUID | None,
                        period: str | None) -> dict[datetime | None, int]:
        """Searches per period start (``None`` without periods), from the search log's hourly rollups."""
        args, edges, mine = split_window(start, end, user, "search_time", floor_hour, timedelta(hours=1))
        args.append(period)
        rows = await self._db.fetch(
            f"""SELECT {_bucket(len(args))} AS p, sum(n)::bigint AS n FROM (
                    SELECT hour AS t, searches AS n FROM {"search_hours" if user is not None else "search_hours_all"}
                     WHERE hour >= $3 AND hour < $4 {mine}
                    UNION ALL
                    SELECT search_time, 1 FROM searches WHERE {edges} {mine}) x
                 GROUP BY 1""", *args)
        return {r["p"]: r["n"] for r in rows}

    async def _stored_before(self, start: datetime, user: uuid.UUID | None) -> tuple[int, int]:
        """(videos, bytes) stored just before ``start``: every upload before it less every deletion."""
        day = floor_day(start)
        args: list[Any] = [start, day, user or EVERYONE]
        mine = ""
        if user is not None:
            mine = "AND user_id = $3"
        row = await self._db.fetchrow(
            f"""SELECT coalesce(sum(uploads - deletions), 0)::bigint AS videos,
                       coalesce(sum(uploaded_bytes - deleted_bytes), 0)::bigint AS size FROM (
                    SELECT uploads, deletions, uploaded_bytes, deleted_bytes FROM usage_days
                     WHERE user_id = $3 AND day < ($2::timestamptz AT TIME ZONE 'UTC')::date
                    UNION ALL
                    SELECT {_EVENT_COLUMNS["uploads"]}, {_EVENT_COLUMNS["deletions"]},
                           {_EVENT_COLUMNS["uploaded_bytes"]}, {_EVENT_COLUMNS["deleted_bytes"]}
                      FROM usage_events WHERE event_time >= $2 AND event_time < $1 {mine}) x""", *args)
        assert row is not None
        return int(row["videos"]), int(row["size"])
