"""Report windows cut at whole rollup periods: the rollups (hourly or daily, UTC) answer a window's whole
periods, the raw rows its partial first and last ones (``split_window``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def floor_day(at: datetime) -> datetime:
    return floor_hour(at).replace(hour=0)


def split_window(start: datetime | None, end: datetime | None, user: uuid.UUID | None, column: str,
                 floor: Callable[[datetime], datetime], step: timedelta) -> tuple[list[Any], str, str]:
    """A window cut at whole rollup periods (``floor``, ``step``: hours or days): (arguments — $1..$4 its start,
    end, first and last whole period, then the user's id if any —, the condition of its partial first and last
    periods on the raw rows' ``column``, the user condition ("" for everyone's))."""
    start = start or EARLIEST
    end = end or datetime.now(UTC)
    first, last = floor(start), floor(end)
    if first != start:
        first += step
    if last <= first:  # no whole period inside: all of it from the raw rows
        first = last = start
    args: list[Any] = [start, end, first, last]
    mine = ""
    if user is not None:
        args.append(user)
        mine = f"AND user_id = ${len(args)}"
    return args, f"(({column} >= $1 AND {column} < $3) OR ({column} >= $4 AND {column} < $2))", mine


# The whole days of a ``split_window`` by days, on a daily rollup's ``day``.
WHOLE_DAYS = ("day >= ($3::timestamptz AT TIME ZONE 'UTC')::date "
              "AND day < ($4::timestamptz AT TIME ZONE 'UTC')::date")
