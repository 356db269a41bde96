"""Subtitles as plain timed text: parse SRT/WebVTT/ASS, clip to a video, pick and extract text tracks.

A ``Cue`` is what transcript search needs: start, end (seconds) and the words, markup removed and lines
joined. Image-based subtitle tracks (PGS, VobSub, DVB) are never a transcript source here: they are
skipped by ``pick_text_track``, not an error.
"""

from __future__ import annotations

import asyncio
import codecs
import html
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import pysubs2

from services.common.errors import FailedPrecondition
from services.pipeline.media import SubtitleStream, media_error, run_tool

REASON_INVALID_SUBTITLES = "INVALID_SUBTITLES"
EXTRACT_TIMEOUT_S = 120.0

_FORMAT_ALIASES = {
    "srt": "srt", "subrip": "srt", "application/x-subrip": "srt",
    "vtt": "vtt", "webvtt": "vtt", "text/vtt": "vtt",
    "ass": "ass", "ssa": "ssa", "text/x-ssa": "ssa",
}  # fmt: skip
_SUFFIX_FORMATS = {".srt": "srt", ".vtt": "vtt", ".webvtt": "vtt", ".ass": "ass", ".ssa": "ssa"}

_HTML_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][^<>]*>|<\d{1,2}:\d{2}[0-9:.]*>")  # <i>, </font>, <c.x>, <00:01.000>
_DANGLING_TAG = re.compile(r"</?[a-zA-Z]{1,6}$")  # an unclosed "<i" at a line end
_ASS_OVERRIDE = re.compile(r"\{\\[^{}]*\}")  # {\an8}, {\i1}, {\pos(1,2)}
_WHITESPACE = re.compile(r"\s+")
_LANGUAGE_ALIASES = {
    "en": "eng", "fr": "fra", "de": "deu", "es": "spa", "it": "ita", "pt": "por", "nl": "nld",
    "ru": "rus", "ja": "jpn", "zh": "zho", "ko": "kor", "ar": "ara", "pl": "pol", "sv": "swe",
}  # fmt: skip
_BIBLIOGRAPHIC_LANGUAGES = {"fre": "fra", "ger": "deu", "dut": "nld", "chi": "zho"}


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: shown from ``start_s`` to ``end_s`` (seconds), ``text`` on one line."""

    start_s: float
    end_s: float
    text: str


def parse_subtitles(
    data: bytes | str,
    fmt: str | None = None,
    filename: str | None = None,
    *,
    field: str = "sidecar_subtitles",
) -> list[Cue]:
    """Parse SRT, WebVTT (or ASS/SSA) into cues sorted by start, markup stripped, empty cues dropped.

    The format comes from ``fmt`` (``srt``/``vtt``/``webvtt``/``ass``...), else the ``filename``
    suffix, else the content. Bytes are read as UTF-8 (BOM or not, UTF-16 with a BOM), falling back to
    Windows-1252/Latin-1. Content that holds no cue raises ``InvalidArgument`` (INVALID_SUBTITLES) on
    ``field``.
    """
    text = decode_subtitle_bytes(data) if isinstance(data, bytes) else data.lstrip("\ufeff")
    if not text.strip():
        raise media_error(REASON_INVALID_SUBTITLES, "subtitle file is empty", field)
    format_id = _format_id(text, fmt, filename, field)
    try:
        parsed = pysubs2.SSAFile.from_string(text, format_=format_id)
    except (pysubs2.Pysubs2Error, ValueError, IndexError, KeyError) as exc:
        raise media_error(REASON_INVALID_SUBTITLES, f"not valid {format_id or 'subtitles'}: {exc}", field) from exc
    events = [event for event in parsed.events if not event.is_comment]
    if not events:
        raise media_error(REASON_INVALID_SUBTITLES, "no subtitle cue found", field)
    cues = []
    for event in events:
        start, end = max(0, event.start) / 1000.0, event.end / 1000.0
        words = clean_cue_text(event.text)
        if words and end > start:
            cues.append(Cue(start, end, words))
    cues.sort(key=lambda cue: (cue.start_s, cue.end_s))
    return cues


def decode_subtitle_bytes(data: bytes) -> str:
    """Bytes → text: honour a UTF-8/UTF-16 BOM, else UTF-8, else Windows-1252, else Latin-1."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def clean_cue_text(raw: str) -> str:
    """Cue markup → words on one line: ASS overrides, HTML-ish/VTT tags (even broken ones), entities."""
    text = _ASS_OVERRIDE.sub("", raw)
    text = text.replace("\\N", "\n").replace("\\n", "\n").replace("\\h", " ")
    lines = []
    for line in text.splitlines():
        line = _DANGLING_TAG.sub("", _HTML_TAG.sub("", line))
        lines.append(html.unescape(line))
    return _WHITESPACE.sub(" ", " ".join(lines)).strip()


def clip_cues(cues: Iterable[Cue], duration_s: float) -> list[Cue]:
    """Keep cues that start before ``duration_s``; clamp their ends to it."""
    return [
        Cue(cue.start_s, min(cue.end_s, duration_s), cue.text)
        for cue in cues
        if cue.start_s < duration_s and min(cue.end_s, duration_s) > cue.start_s
    ]


def pick_text_track(streams: Sequence[SubtitleStream], prefer_language: str = "en") -> SubtitleStream | None:
    """The best text subtitle track, or None: image tracks (PGS, VobSub...) are skipped.

    Order: ``prefer_language`` first (``en`` matches ``eng``/``en-US``), then tracks without a
    language, then others; within those, full tracks before forced ones, the default track first,
    then the lowest index.
    """

    def rank(stream: SubtitleStream) -> tuple[int, bool, bool, int]:
        if _language_matches(stream.language, prefer_language):
            language_rank = 0
        elif not stream.language:
            language_rank = 1
        else:
            language_rank = 2
        return (language_rank, stream.is_forced, not stream.is_default, stream.index)

    text_streams = [s for s in streams if s.is_text]
    return min(text_streams, key=rank) if text_streams else None


async def extract_text_track(
    path: str | os.PathLike[str], stream: SubtitleStream, *, field: str = "video"
) -> list[Cue]:
    """Convert embedded text track ``stream`` of the file at ``path`` to cues (via ffmpeg → SRT)."""
    if not stream.is_text:
        raise FailedPrecondition(
            f"subtitle stream {stream.index} ({stream.codec}) is not text", reason="NOT_A_TEXT_TRACK"
        )
    result = await run_tool(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", f"0:{stream.index}",
         "-c:s", "srt", "-f", "srt", "pipe:1"],
        EXTRACT_TIMEOUT_S,
    )  # fmt: skip
    if result.returncode != 0:
        raise media_error(
            REASON_INVALID_SUBTITLES,
            f"subtitle stream {stream.index} cannot be read: {result.stderr_text}",
            field,
        )
    if not result.stdout.strip():
        return []
    return await asyncio.to_thread(parse_subtitles, result.stdout, "srt", None, field=field)


def _format_id(text: str, fmt: str | None, filename: str | None, field: str) -> str | None:
    """pysubs2 format id from the explicit format, the file name, or the content (None: autodetect)."""
    if fmt:
        key = fmt.strip().lower().lstrip(".")
        if key not in _FORMAT_ALIASES:
            raise media_error(REASON_INVALID_SUBTITLES, f"unsupported subtitle format {fmt!r}", field)
        return _FORMAT_ALIASES[key]
    if filename:
        suffix = PurePath(filename).suffix.lower()
        if suffix in _SUFFIX_FORMATS:
            return _SUFFIX_FORMATS[suffix]
    head = text.lstrip()[:200]
    if head.startswith("WEBVTT"):
        return "vtt"
    if head.startswith("[Script Info]"):
        return "ass"
    if "-->" in text:
        return "srt"
    return None


def _language_matches(language: str, preferred: str) -> bool:
    """Does track language tag ``language`` (ISO 639-1/2, BCP 47) denote ``preferred``?"""
    if not language or not preferred:
        return False

    def normalise(tag: str) -> str:
        base = tag.strip().lower().replace("_", "-").split("-")[0]
        base = _LANGUAGE_ALIASES.get(base, base)
        return _BIBLIOGRAPHIC_LANGUAGES.get(base, base)

    return normalise(language) == normalise(preferred)
