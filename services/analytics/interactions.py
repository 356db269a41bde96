"""What people do with search results (impressions, clicks, plays, shares), checked against the search log.

An interaction from a search names the search id the client got with its results; the search must be the
caller's own and must have ranked the clip (its logged page holds it), and the rank is the one the search gave.
The search log arrives from the search service through its outbox, a moment after the search answered, so a
client that reports an impression at once may be ahead of it: recording waits up to ``search_wait_s`` for the
search to be logged before answering NOT_FOUND. An interaction without a search (a play from a shared link) is
recorded as the caller's without that check; impressions and clicks always need one.

A click also counts on its search (``searches.click_count``, and ``first_click_rank`` once), in the same
transaction: the click-through rate and the mean reciprocal rank are read from those two columns. A client
request id makes recording idempotent per user: the same id again returns the first recording.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.common.db import Database
from services.common.errors import NotFound, invalid_field

TYPES = ("IMPRESSION", "CLICK", "PLAY", "SHARE")
MAX_REQUEST_ID_CHARS = 64
SEARCH_POLL_S = 0.1


@dataclass(frozen=True)
class NewInteraction:
    """An interaction as a client reports it (``rank`` 0: the search's rank for the clip)."""

    user_id: uuid.UUID
    search_id: uuid.UUID | None
    clip_id: uuid.UUID
    type: str
    rank: int = 0
    watched_seconds: float = 0.0
    request_id: str = ""


@dataclass(frozen=True)
class Interaction:
    id: uuid.UUID
    user_id: uuid.UUID
    search_id: uuid.UUID | None
    clip_id: uuid.UUID
    type: str
    rank: int
    watched_seconds: float
    create_time: datetime


def _interaction(row: asyncpg.Record) -> Interaction:
    return Interaction(row["id"], row["user_id"], row["search_id"], row["clip_id"], row["type"], row["rank"],
                       row["watched_seconds"], row["create_time"])


def check(new: NewInteraction) -> None:
    """The checks that need no database: type, watched seconds, request id, a search for impressions/clicks."""
    if new.type not in TYPES:
        raise invalid_field("interaction.type", "one of TYPE_IMPRESSION, TYPE_CLICK, TYPE_PLAY, TYPE_SHARE",
                            reason="REQUIRED_FIELD")
    if not math.isfinite(new.watched_seconds) or new.watched_seconds < 0:
        raise invalid_field("interaction.watched_seconds", "must be a number of seconds, 0 or more")
    if new.watched_seconds and new.type != "PLAY":
        raise invalid_field("interaction.watched_seconds", "only a play has watched seconds")
    if new.rank < 0:
        raise invalid_field("interaction.rank", "must not be negative")
    if len(new.request_id) > MAX_REQUEST_ID_CHARS:
        raise invalid_field("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
    if new.search_id is None and new.type in ("IMPRESSION", "CLICK"):
        raise invalid_field("interaction.search_id", "required for impressions and clicks", reason="REQUIRED_FIELD")
    if new.search_id is None and new.rank:
        raise invalid_field("interaction.rank", "a rank needs the search it is a rank in")


async def _count_click(conn: asyncpg.Connection, search_id: uuid.UUID | None, rank: int) -> None:
    """A click on ``search_id``'s result at ``rank``: counted on the search and its query's day and, when it is
    the search's first, in its hour's rollups (the user's, then everyone's: the order logging a search takes
    them in too)."""
    search = await conn.fetchrow(
        "UPDATE searches SET click_count = click_count + 1, first_click_rank = coalesce(first_click_rank, $2) "
        "WHERE id = $1 RETURNING user_id, date_trunc('hour', search_time, 'UTC') AS hour, normalized_query, "
        "(search_time AT TIME ZONE 'UTC')::date AS day, click_count = 1 AS first", search_id, rank)
    if search is None:
        return
    first = int(search["first"])
    if first:
        await conn.execute("UPDATE search_hours SET clicked = clicked + 1, rr_sum = rr_sum + 1.0 / $3 "
                           "WHERE user_id = $1 AND hour = $2", search["user_id"], search["hour"], rank)
        await conn.execute("UPDATE search_hours_all SET clicked = clicked + 1, rr_sum = rr_sum + 1.0 / $2 "
                           "WHERE hour = $1", search["hour"], rank)
    if search["normalized_query"]:
        await conn.execute("UPDATE query_days SET clicks = clicks + 1, clicked = clicked + $4 "
                           "WHERE user_id = $1 AND day = $2 AND normalized_query = $3",
                           search["user_id"], search["day"], search["normalized_query"], first)
        await conn.execute("UPDATE query_days_all SET clicks = clicks + 1, clicked = clicked + $3 "
                           "WHERE day = $1 AND normalized_query = $2", search["day"], search["normalized_query"], first)


# An interaction added to its clip's day: the user's ($1), then everyone's (which names $1 only to type it: both
# statements take the same arguments).
_CLIP_DAY_COUNTS = ("($4 = 'CLICK')::int, ($4 = 'IMPRESSION')::int, ($4 = 'PLAY')::int, $5")
_CLIP_DAYS = (
    f"""INSERT INTO clip_days (user_id, day, clip_id, clicks, impressions, plays, watched_seconds)
        VALUES ($1, ($3 AT TIME ZONE 'UTC')::date, $2, {_CLIP_DAY_COUNTS})
        ON CONFLICT (user_id, day, clip_id) DO UPDATE SET clicks = clip_days.clicks + EXCLUDED.clicks,
            impressions = clip_days.impressions + EXCLUDED.impressions, plays = clip_days.plays + EXCLUDED.plays,
            watched_seconds = clip_days.watched_seconds + EXCLUDED.watched_seconds""",
    f"""INSERT INTO clip_days_all (day, clip_id, clicks, impressions, plays, watched_seconds)
        SELECT ($3 AT TIME ZONE 'UTC')::date, $2, {_CLIP_DAY_COUNTS} WHERE $1::uuid IS NOT NULL
        ON CONFLICT (day, clip_id) DO UPDATE SET clicks = clip_days_all.clicks + EXCLUDED.clicks,
            impressions = clip_days_all.impressions + EXCLUDED.impressions,
            plays = clip_days_all.plays + EXCLUDED.plays,
            watched_seconds = clip_days_all.watched_seconds + EXCLUDED.watched_seconds""",
)


async def _count_on_clip(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    for sql in _CLIP_DAYS:
        await conn.execute(sql, row["user_id"], row["clip_id"], row["create_time"], row["type"],
                           row["watched_seconds"])


class InteractionStore:
    def __init__(self, db: Database, *, search_wait_s: float = 2.0) -> None:
        self._db = db
        self._search_wait_s = search_wait_s

    async def record(self, new: NewInteraction) -> Interaction:
        """Record ``new`` (checked: see the module docstring), or return what its request id recorded before."""
        check(new)
        if new.request_id and (done := await self._by_request(new.user_id, new.request_id)) is not None:
            return done
        rank = await self._rank_in_search(new) if new.search_id is not None else 0
        async with self._db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO interactions (id, user_id, request_id, search_id, clip_id, type, rank, watched_seconds) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, request_id) DO NOTHING RETURNING *",
                uuid.uuid4(), new.user_id, new.request_id or None, new.search_id, new.clip_id, new.type, rank,
                new.watched_seconds)
            if row is None:  # the same request id, recorded concurrently
                done = await self._by_request(new.user_id, new.request_id, conn=conn)
                assert done is not None
                return done
            if new.type == "CLICK":
                await _count_click(conn, new.search_id, rank)
            await _count_on_clip(conn, row)
        return _interaction(row)

    async def _by_request(self, user_id: uuid.UUID, request_id: str, *,
                          conn: asyncpg.Connection | None = None) -> Interaction | None:
        sql = "SELECT * FROM interactions WHERE user_id = $1 AND request_id = $2"
        row = await (conn.fetchrow(sql, user_id, request_id) if conn is not None
                     else self._db.fetchrow(sql, user_id, request_id))
        return _interaction(row) if row is not None else None

    async def _rank_in_search(self, new: NewInteraction) -> int:
        """The rank ``new.search_id`` (the caller's) gave ``new.clip_id``, once the search is logged."""
        deadline = time.monotonic() + self._search_wait_s
        while True:
            row = await self._db.fetchrow(
                "SELECT s.user_id, (SELECT min(r.rank) FROM search_results r "
                "                    WHERE r.search_id = s.id AND r.clip_id = $2) AS rank "
                "FROM searches s WHERE s.id = $1", new.search_id, new.clip_id)
            if row is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(SEARCH_POLL_S)
        if row is None or row["user_id"] != new.user_id:  # another user's search is as unknown as a missing one
            raise NotFound(f"search {new.search_id} is not one of yours (or is not logged yet)",
                           reason="SEARCH_NOT_FOUND", metadata={"search_id": str(new.search_id)})
        if row["rank"] is None:
            raise invalid_field("interaction.clip", "was not among that search's results")
        if new.rank and new.rank != row["rank"]:
            raise invalid_field("interaction.rank", f"that search ranked the clip {row['rank']}, not {new.rank}")
        return int(row["rank"])
