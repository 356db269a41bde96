"""Opaque page tokens for keyset pagination over (create_time, id), and page-size rules (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from services.common.errors import invalid_field


def page_size(requested: int, *, default: int = 50, maximum: int = 1000) -> int:
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(requested or default, maximum)


def encode_token(create_time: datetime, item_id: uuid.UUID) -> str:
    raw = f"{create_time.isoformat()}|{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, uuid.UUID] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, item = raw.split("|", 1)
        return datetime.fromisoformat(stamp), uuid.UUID(item)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_field("page_token", "not a token returned by this API") from None


def parse_name(name: str, collection: str, field: str = "name") -> uuid.UUID:
    """``videos/<uuid>`` → the uuid, or INVALID_ARGUMENT naming ``field``."""
    prefix = f"{collection}/"
    if not name:
        raise invalid_field(field, f"required: a resource name like {prefix}<id>", reason="REQUIRED_FIELD")
    if not name.startswith(prefix):
        raise invalid_field(field, f"must look like {prefix}<id>, got {name!r}", reason="INVALID_NAME")
    try:
        return uuid.UUID(name[len(prefix):])
    except ValueError:
        raise invalid_field(field, f"{name!r} does not name a {collection[:-1]}", reason="INVALID_NAME") from None
