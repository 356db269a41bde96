"""Which extension a stored upload gets and which media type a blob is served with.

Both are decided from fixed allow-lists: the extension from the container ffprobe found (never the
client's filename), the served type from that extension (never guessed from content or from the
``mimetypes`` tables). So no upload can be stored or served as HTML, SVG or a playlist.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from types import MappingProxyType

NEUTRAL_EXTENSION = ".bin"
"""Extension of a stored file whose container is not on the allow-list below (served as bytes)."""
OCTET_STREAM = "application/octet-stream"

# ffprobe demuxer name → extension of the stored copy. Keyed by what ffprobe read, so a client's filename
# (x.html, x.svg, x.m3u8) never reaches the blob key or the served media type.
_CONTAINER_EXTENSIONS: dict[str, str] = {
    "mov": ".mp4", "mp4": ".mp4", "matroska": ".mkv", "avi": ".avi", "mpegts": ".ts", "flv": ".flv",
    "asf": ".wmv", "ogg": ".ogv", "mpeg": ".mpg", "mxf": ".mxf",
}  # fmt: skip
# ffprobe says "matroska,webm" for both; a file whose every codec WebM allows is stored as .webm.
_WEBM_VIDEO_CODECS = frozenset({"vp8", "vp9", "av1"})
_WEBM_CODECS = _WEBM_VIDEO_CODECS | {"vorbis", "opus", "webvtt"}

MEDIA_TYPES: MappingProxyType[str, str] = MappingProxyType(
    {
        ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
        ".webm": "video/webm", ".avi": "video/x-msvideo", ".ts": "video/mp2t", ".flv": "video/x-flv",
        ".wmv": "video/x-ms-wmv", ".ogv": "video/ogg", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
        ".mxf": "application/mxf", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".srt": "text/plain; charset=utf-8", ".vtt": "text/plain; charset=utf-8",
    }
)  # fmt: skip
"""Extension (lower case, with the dot) → the media type a blob is served with. A fixed list of types a
browser never runs as a document or a playlist; everything else is ``OCTET_STREAM``."""


def container_extension(format_name: str, codecs: tuple[str, ...] | list[str] = ()) -> str:
    """The stored file's extension for ffprobe's ``format_name`` (``mov,mp4,m4a,...``, ``matroska,webm``):
    one of the allow-listed video containers, else ``NEUTRAL_EXTENSION``. ``codecs`` (``MediaInfo.codecs``)
    tells WebM from other Matroska."""
    names = [name.strip().lower() for name in format_name.split(",")]
    for name in names:
        ext = _CONTAINER_EXTENSIONS.get(name)
        if ext == ".mkv" and codecs and set(codecs) <= _WEBM_CODECS and _WEBM_VIDEO_CODECS & set(codecs):
            return ".webm"
        if ext:
            return ext
    return NEUTRAL_EXTENSION


def media_type(name: str) -> str:
    """The media type to serve a blob named ``name`` with: by its final extension from ``MEDIA_TYPES``,
    else ``OCTET_STREAM``. Never guessed from content or the ``mimetypes`` tables, so an old blob stored
    as ``source.html`` or ``source.svg`` is still served as bytes."""
    return MEDIA_TYPES.get(PurePosixPath(name).suffix.lower(), OCTET_STREAM)
