"""What clients send with a video, and the bounds it must keep before anything is stored.

Text fields are bounded by length and characters (only a file's base name is kept), upload sizes by the
configured limit, and sidecar subtitles by size and a linear-time parse (``services.media.subtitles``),
so no request can make ingest spend more than a bounded time or store more than it allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import PurePath

from services.common.errors import invalid_field
from services.media.subtitles import MAX_CUE_CHARS, parse_subtitles

SUBTITLE_FORMATS = {"SRT": ".srt", "WEBVTT": ".vtt"}
MAX_SUBTITLE_BYTES = 5 * 1024 * 1024
MAX_TITLE_CHARS = 512
MAX_DESCRIPTION_CHARS = 10_000
MAX_FILENAME_CHARS = 255  # the base name that is kept
MAX_PATH_CHARS = 4096  # what a client may send as a file name (a full path: only its base name is kept)
MAX_CONTENT_TYPE_CHARS = 255  # RFC 6838: type and subtype of at most 127 characters each
MAX_LANGUAGE_CHARS = 35  # a BCP 47 tag
REASON_UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_CHARS_BUT_LAYOUT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # tab, LF, CR allowed


@dataclass(frozen=True)
class SidecarInput:
    """Subtitles sent along with a video."""

    data: bytes
    format: str = ""  # "SRT", "WEBVTT" or "" (detect from filename/content)
    filename: str = ""
    language: str = ""


@dataclass(frozen=True)
class VideoMeta:
    filename: str = ""
    content_type: str = ""
    title: str = ""
    description: str = ""
    size_bytes: int = 0
    sidecar: SidecarInput | None = None
    priority: str = "STANDARD"  # of the video's processing, already checked against the caller's role


def check_text(value: str, field: str, max_chars: int, *, multiline: bool = False) -> str:
    """``value``, if it has at most ``max_chars`` characters and no control characters (tab, LF and CR
    allowed when ``multiline``); else INVALID_ARGUMENT on ``field``."""
    if len(value) > max_chars:
        raise invalid_field(field, f"longer than {max_chars} characters", reason="VALUE_TOO_LONG")
    if (_CONTROL_CHARS_BUT_LAYOUT if multiline else _CONTROL_CHARS).search(value):
        raise invalid_field(field, "holds control characters", reason="INVALID_CHARACTERS")
    return value


def check_filename(value: str, field: str) -> str:
    """The base name of a client's file name: folders (``/`` or ``\\``) dropped, ``.`` and ``..`` empty."""
    check_text(value, field, MAX_PATH_CHARS)
    base = value.replace("\\", "/").rpartition("/")[2].strip()
    return check_text("" if base in (".", "..") else base, field, MAX_FILENAME_CHARS)


def check_video_text(title: str, description: str, prefix: str = "") -> None:
    """A video's title and description, as a request sets them (fields ``{prefix}title`` …)."""
    check_text(title, f"{prefix}title", MAX_TITLE_CHARS)
    check_text(description, f"{prefix}description", MAX_DESCRIPTION_CHARS, multiline=True)


def check_size(size_bytes: int, field: str, max_upload: int) -> None:
    if size_bytes < 0:
        raise invalid_field(field, "must not be negative")
    if size_bytes > max_upload:
        raise invalid_field(field, f"larger than the limit of {max_upload} bytes", reason=REASON_UPLOAD_TOO_LARGE)


def checked_meta(meta: VideoMeta, max_upload: int) -> VideoMeta:
    """A stream's metadata, checked (fields ``metadata.*``), its file name cut to the base name."""
    check_video_text(meta.title, meta.description, "metadata.")
    check_text(meta.content_type, "metadata.content_type", MAX_CONTENT_TYPE_CHARS)
    check_size(meta.size_bytes, "metadata.size_bytes", max_upload)
    return replace(meta, filename=check_filename(meta.filename, "metadata.filename"))


def check_sidecar(sidecar: SidecarInput) -> str:
    """Parse the sidecar once now so bad subtitles are refused with the request; returns its format. The
    parse is linear: the largest accepted file takes well under a second, whatever it holds."""
    check_text(sidecar.filename, "sidecar_subtitles.filename", MAX_PATH_CHARS)
    check_text(sidecar.language, "sidecar_subtitles.language", MAX_LANGUAGE_CHARS)
    if not sidecar.data:
        raise invalid_field("sidecar_subtitles", "empty subtitle file", reason="INVALID_SUBTITLES")
    if len(sidecar.data) > MAX_SUBTITLE_BYTES:
        raise invalid_field("sidecar_subtitles", f"larger than {MAX_SUBTITLE_BYTES} bytes",
                            reason="INVALID_SUBTITLES")
    fmt = sidecar.format
    if not fmt:
        suffix = PurePath(sidecar.filename).suffix.lower()
        head = sidecar.data[:64].lstrip(b"\xef\xbb\xbf").lstrip()
        fmt = "WEBVTT" if suffix == ".vtt" or head.startswith(b"WEBVTT") else "SRT"
    cues = parse_subtitles(sidecar.data, fmt.lower(), filename=sidecar.filename, field="sidecar_subtitles")
    if not cues:
        raise invalid_field("sidecar_subtitles", "no cue with readable text (empty, or markup over "
                            f"{MAX_CUE_CHARS} characters)", reason="INVALID_SUBTITLES")
    return fmt
