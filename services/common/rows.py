"""SQL helpers every repository uses: records from rows, keyset pagination newest first."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import datetime
from typing import Any

import asyncpg


def newest_first(
    select: str, equals: dict[str, Any], after: tuple[datetime, uuid.UUID] | None, limit: int, *, alias: str = ""
) -> tuple[str, list[Any]]:
    """``select`` newest first, keyset-paginated by (create_time, id) after ``after``, filtered by
    ``column = value`` for every value that is not None: the SQL and its arguments."""
    where: list[str] = []
    args: list[Any] = []
    if after is not None:
        args += [after[0], after[1]]
        where.append(f"({alias}create_time, {alias}id) < ($1, $2)")
    for column, value in equals.items():
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    args.append(limit)
    filters = f" WHERE {' AND '.join(where)}" if where else ""
    return (f"{select}{filters} ORDER BY {alias}create_time DESC, {alias}id DESC LIMIT ${len(args)}", args)


def to_record(cls: Any, row: asyncpg.Record) -> Any:
    """The dataclass ``cls`` from ``row``, ignoring columns the record does not have."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in dict(row).items() if k in names})
