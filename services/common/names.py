"""Resource names of the API (AIP-122), formatted and parsed in one place.

    videos/{video}                              users/{user}   (users/me: the caller, where the API allows it)
    videos/{video}/transcriptSegments/{index}   users/{user}/apiKeys/{api_key}
    jobs/{job}   deadLetters/{dead_letter}      clips/{clip}   uploads/{upload}

Every id is a UUID except a transcript segment's index. A name that is missing or malformed is
``InvalidArgument`` naming the request field it came from (``REQUIRED_FIELD`` / ``INVALID_NAME``).

Blob keys (``videos/{video}/source.mp4``, thumbnails, scene frames) look alike but are storage paths, not
resource names; they are not made here.
"""

from __future__ import annotations

import uuid

from services.common.errors import invalid_field

VIDEOS = "videos"
JOBS = "jobs"
DEAD_LETTERS = "deadLetters"
CLIPS = "clips"
UPLOADS = "uploads"
USERS = "users"
API_KEYS = "apiKeys"
TRANSCRIPT_SEGMENTS = "transcriptSegments"
COMPILATIONS = "compilations"

#: ``users/me``: the caller, where a method accepts it.
ME = "me"


# ---- format ------------------------------------------------------------------------------------------------


def video_name(video_id: uuid.UUID) -> str:
    return f"{VIDEOS}/{video_id}"


def job_name(job_id: uuid.UUID) -> str:
    return f"{JOBS}/{job_id}"


def dead_letter_name(letter_id: uuid.UUID) -> str:
    return f"{DEAD_LETTERS}/{letter_id}"


def clip_name(clip_id: uuid.UUID) -> str:
    return f"{CLIPS}/{clip_id}"


def upload_name(upload_id: uuid.UUID) -> str:
    return f"{UPLOADS}/{upload_id}"


def user_name(user_id: uuid.UUID) -> str:
    return f"{USERS}/{user_id}"


def api_key_name(user_id: uuid.UUID, key_id: uuid.UUID) -> str:
    return f"{user_name(user_id)}/{API_KEYS}/{key_id}"


def transcript_segment_name(video_id: uuid.UUID, index: int) -> str:
    return f"{video_name(video_id)}/{TRANSCRIPT_SEGMENTS}/{index}"


# ---- parse -------------------------------------------------------------------------------------------------


def compilation_name(compilation_id: uuid.UUID) -> str:
    return f"{COMPILATIONS}/{compilation_id}"


def parse_compilation_name(name: str, field: str = "name") -> uuid.UUID:
    return parse_name(name, COMPILATIONS, field)


def parse_name(name: str, collection: str, field: str = "name") -> uuid.UUID:
    """``{collection}/<uuid>`` → the uuid, or ``InvalidArgument`` naming ``field``."""
    prefix = f"{collection}/"
    if not name:
        raise invalid_field(field, f"required: a resource name like {prefix}<id>", reason="REQUIRED_FIELD")
    if not name.startswith(prefix):
        raise invalid_field(field, f"must look like {prefix}<id>, got {name!r}", reason="INVALID_NAME")
    try:
        return uuid.UUID(name[len(prefix):])
    except ValueError:
        singular = "dead letter" if collection == DEAD_LETTERS else collection.removesuffix("s")
        raise invalid_field(field, f"{name!r} does not name a {singular}", reason="INVALID_NAME") from None


def parse_video_name(name: str, field: str = "name") -> uuid.UUID:
    return parse_name(name, VIDEOS, field)


def parse_job_name(name: str, field: str = "name") -> uuid.UUID:
    return parse_name(name, JOBS, field)


def parse_clip_name(name: str, field: str = "name") -> uuid.UUID:
    return parse_name(name, CLIPS, field)


def parse_upload_name(name: str, field: str = "name") -> uuid.UUID:
    return parse_name(name, UPLOADS, field)


def parse_user_name(name: str, field: str = "name") -> uuid.UUID:
    return parse_name(name, USERS, field)


def parse_user_or_me(name: str, field: str = "name") -> uuid.UUID | None:
    """``users/me`` → None (the caller); ``users/<uuid>`` → that id."""
    if name == f"{USERS}/{ME}":
        return None
    if name and not name.startswith(f"{USERS}/"):
        raise invalid_field(field, f"must look like {USERS}/<id> or {USERS}/{ME}, got {name!r}", reason="INVALID_NAME")
    return parse_user_name(name, field)


def parse_api_key_name(name: str, field: str = "name") -> tuple[uuid.UUID | None, uuid.UUID]:
    """``users/{user}/apiKeys/<uuid>`` → (the user's id, or None for ``users/me``; the key's id)."""
    shape = f"{USERS}/{{user}}/{API_KEYS}/{{api_key}}"
    if not name:
        raise invalid_field(field, f"required: a resource name like {shape}", reason="REQUIRED_FIELD")
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != USERS or parts[2] != API_KEYS:
        raise invalid_field(field, f"must look like {shape}, got {name!r}", reason="INVALID_NAME")
    user_id = parse_user_or_me("/".join(parts[:2]), field)
    try:
        return user_id, uuid.UUID(parts[3])
    except ValueError:
        raise invalid_field(field, f"{name!r} does not name an API key", reason="INVALID_NAME") from None
