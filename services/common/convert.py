"""Small proto ↔ Python conversions shared by servicers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def from_timestamp(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return getattr(message, field).ToDatetime(tzinfo=UTC)


def enum_value(enum: Any, prefix: str, name: str) -> Any:
    """``READY`` → ``Video.State.STATE_READY``; unknown names map to the _UNSPECIFIED value."""
    try:
        return int(enum.Value(f"{prefix}_{name}"))
    except ValueError:
        return 0


def enum_name(enum: Any, prefix: str, value: int) -> str:
    """``Video.State.STATE_READY`` → ``READY``."""
    return str(enum.Name(value)).removeprefix(f"{prefix}_")
