"""Opaque page tokens for keyset pagination over (create_time, id), and page-size rules (AIP-158).

A token is bound to the request it was issued for (AIP-158: the other request fields must match): it carries a
digest of the caller and of every field that shapes the list (filter, order, parent), and a token presented with
another caller or other fields is INVALID_ARGUMENT. So a token cannot carry one list's position into another
list, nor one user's into another's. The position itself is not secret (a time and an id the caller has seen).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from datetime import datetime

from services.common.errors import invalid_field


def page_size(requested: int, *, default: int = 50, maximum: int = 1000) -> int:
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(requested or default, maximum)


def bound_to(*parts: object) -> str:
    """What a page token is bound to: a short digest of the caller and of the request fields that shape the list
    (pass them all, in a fixed order, e.g. ``bound_to(caller.user_id, "ListVideos", request.filter)``)."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _encode(position: str, binding: str) -> str:
    return base64.urlsafe_b64encode(f"{position}|{binding}".encode()).decode().rstrip("=")


def _decode(token: str, binding: str) -> str:
    """The position part of a token; INVALID_ARGUMENT for a token that is not ours or was issued for another
    request (``binding`` differs)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        position, issued_for = raw.rsplit("|", 1)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_field("page_token", "not a token returned by this API") from None
    if issued_for != binding:
        raise invalid_field("page_token", "this token was issued for another request (its caller, filter, order "
                            "or query differ); start again without a token", reason="PAGE_TOKEN_MISMATCH")
    return position


def encode_token(create_time: datetime, item_id: uuid.UUID, binding: str = "") -> str:
    """A keyset position (the last item's create time and id) for the next page of the request ``binding``."""
    return _encode(f"{create_time.isoformat()}|{item_id}", binding)


def decode_token(token: str, binding: str = "") -> tuple[datetime, uuid.UUID] | None:
    """The keyset position of a token from ``encode_token`` for the same request; None for no token."""
    if not token:
        return None
    position = _decode(token, binding)
    try:
        stamp, item = position.split("|", 1)
        return datetime.fromisoformat(stamp), uuid.UUID(item)
    except ValueError:
        raise invalid_field("page_token", "not a token returned by this API") from None


def encode_offset(offset: int, binding: str) -> str:
    """An offset into a ranking (search results) for the next page of the request ``binding``."""
    return _encode(str(offset), binding)


def decode_offset(token: str, binding: str) -> int:
    """The offset of a token from ``encode_offset`` for the same request; 0 for no token."""
    if not token:
        return 0
    position = _decode(token, binding)
    if not position.isdigit():
        raise invalid_field("page_token", "not a token returned by this API")
    return int(position)

