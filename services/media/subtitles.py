"""Subtitles as plain timed text: parse SRT/WebVTT/ASS, clip to a video, pick and extract text tracks.

A ``Cue`` is what transcript search needs: start, end (seconds) and the words, markup removed and lines
joined. Image-based subtitle tracks (PGS, VobSub, DVB) are never a transcript source here: they are
skipped by ``pick_text_track``, not an error.

The parsers are our own, and run in time linear in the input: sidecar subtitles come from clients (up
to 5 MiB), and pysubs2's SubRip reader, which we used before, rewrites tags with a regex that is
quadratic on tag-heavy text (80 KB of ``<a`` in a cue took 2.6 s, 5 MiB would take hours). Lines with
``-->`` are found with ``str.find`` and each is matched once against a bounded timing regex; cue text is
sliced between them; every regex run on cue text starts at a literal (``<``, ``{``, ``&``) and uses
possessive or bounded repeats, so no input makes one backtrack. Work is bounded too: at most ``MAX_CUES``
cues, and a cue longer than ``MAX_CUE_CHARS`` is not text. They accept what players accept: BOM, CRLF,
missing blank lines between cues, ``.`` or ``,`` before milliseconds, 1-digit hours, ``MM:SS.mmm``, cue ids,
cue settings, WebVTT header/NOTE/STYLE/REGION blocks, and for ASS/SSA the ``Dialogue`` lines of ``[Events]``
in the order its ``Format`` line gives.
"""

from __future__ import annotations

import asyncio
import codecs
import html
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import PurePath
from typing import Any

from services.common.errors import FailedPrecondition
from services.media.probe import SubtitleStream, media_error, run_tool

REASON_INVALID_SUBTITLES = "INVALID_SUBTITLES"
# Far more than any real file holds (a feature film has 1-2 thousand cues, a day of dense dialogue ~40
# thousand); bounds the work on a file of tiny cues, ~16 bytes each, to that of a realistic 5 MiB one.
MAX_CUES = 100_000
# A cue is what a viewer reads in a few seconds: one whose words are longer than this is not subtitle text
# (markup soup, a whole transcript pasted into one cue) and is dropped, like an empty one.
MAX_CUE_CHARS = 10_000
# Markup is a few times the words at most (``<font color="#ffff00">`` around a word): a cue whose raw text is
# this long cannot hold MAX_CUE_CHARS of words worth reading, and is dropped without cleaning it.
_MAX_CUE_RAW_CHARS = 64 * MAX_CUE_CHARS
EXTRACT_TIMEOUT_S = 120.0

_FORMAT_ALIASES = {
    "srt": "srt", "subrip": "srt", "application/x-subrip": "srt",
    "vtt": "vtt", "webvtt": "vtt", "text/vtt": "vtt",
    "ass": "ass", "ssa": "ssa", "text/x-ssa": "ssa",
}  # fmt: skip
_SUFFIX_FORMATS = {".srt": "srt", ".vtt": "vtt", ".webvtt": "vtt", ".ass": "ass", ".ssa": "ssa"}

# Every pattern below starts at a literal character and uses possessive (``*+``) or bounded repeats, so
# matching is linear in the text whatever it holds (``\s*/?\s*`` before a letter was quadratic on "<"
# followed by many spaces).
_TS = r"(?:(\d{1,3}):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,9}))?"  # [H]H:MM:SS,mmm / MM:SS.mmm, "." or ","
_TIMING_LINE = re.compile(rf"[ \t]*+{_TS}[ \t]*+-->[ \t]*+{_TS}(?:[ \t][^\n]*+)?[ \t]*+")  # fullmatch a line
_BLANK_LINE = re.compile(r"\n[ \t]*+\n")
_ASS_LINE = re.compile(  # a [Section] header, or a Format:/Dialogue: line of one
    r"^[ \t]*+(?:\[([^\]\n]*+)\]|(format|dialogue)[ \t]*+:([^\n]*+))", re.MULTILINE | re.IGNORECASE
)
_ASS_TIME = re.compile(r"[ \t]*+(\d{1,3}):(\d{1,2}):(\d{1,2})(?:[.,](\d{1,9}))?[ \t]*+")
# A cue's start and end as the timestamp regexes capture them: (hours, minutes, seconds, fraction) twice.
_Times = tuple[Any, ...]
_ASS_MAX_FIELDS = 32
_ASS_DEFAULT_FIELDS = ("layer", "start", "end", "style", "name", "marginl", "marginr", "marginv", "effect", "text")
_HTML_TAG = re.compile(  # <i>, </font>, <c.x>, <v Roger>, <00:01.000>
    r"<[^\S\n]*+(?:/[^\S\n]*+)?[a-zA-Z][^<>\n]*+>|<\d{1,2}:\d{2}[0-9:.]*+>"
)
_DANGLING_TAG = re.compile(r"</?[a-zA-Z]{1,6}$", re.MULTILINE)  # an unclosed "<i" at a line end
_ASS_OVERRIDE = re.compile(r"\{\\[^{}]*+\}")  # {\an8}, {\i1}, {\pos(1,2)}
_LONG_DECIMAL_REF = re.compile(r"&#([0-9]{8,}+)(;?)")  # html.unescape raises on > 4300 digits
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]++")
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
    """Parse SRT, WebVTT (or ASS/SSA) into cues sorted by start, markup stripped, empty cues (and cues over
    ``MAX_CUE_CHARS``) dropped.

    The format comes from ``fmt`` (``srt``/``vtt``/``webvtt``/``ass``...), else the ``filename``
    suffix, else the content. Bytes are read as UTF-8 (BOM or not, UTF-16 with a BOM), falling back to
    Windows-1252/Latin-1. Content that holds no cue raises ``InvalidArgument`` (INVALID_SUBTITLES) on
    ``field``. Time and memory are linear in the input.
    """
    text = decode_subtitle_bytes(data) if isinstance(data, bytes) else data.lstrip("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise media_error(REASON_INVALID_SUBTITLES, "subtitle file is empty", field)
    format_id = _format_id(text, fmt, filename, field)
    if format_id is None:
        raise media_error(REASON_INVALID_SUBTITLES, "not SRT, WebVTT or ASS subtitles: no cue timing found", field)
    timed = _ass_events(text) if format_id in ("ass", "ssa") else _timed_blocks(text, vtt=format_id == "vtt")
    seen = found = 0
    cues = []
    for times, raw in timed:
        seen += 1
        if seen > MAX_CUES:
            raise media_error(REASON_INVALID_SUBTITLES, f"more than {MAX_CUES} cues (or lines that look like one)",
                              field)
        if times is None:
            continue
        found += 1
        if not raw or len(raw) > _MAX_CUE_RAW_CHARS:  # cheap checks first: many empty cues stay cheap
            continue
        start, end = _seconds(*times[:4]), _seconds(*times[4:])
        if end > start and (words := clean_cue_text(raw)) and len(words) <= MAX_CUE_CHARS:
            cues.append(Cue(start, end, words))
    if not found:
        raise media_error(REASON_INVALID_SUBTITLES, "no subtitle cue found", field)
    cues.sort(key=attrgetter("start_s", "end_s"))
    return cues


def decode_subtitle_bytes(data: bytes) -> str:
    """Bytes → text: honour a UTF-8/UTF-16 BOM, else UTF-8, else Windows-1252, else Latin-1."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:  # an odd length or a lone surrogate: not UTF-16 after all
            pass
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def clean_cue_text(raw: str) -> str:
    """Cue markup → words on one line: ASS overrides, HTML-ish/VTT tags (even broken ones), entities.

    Linear in ``raw``; control characters (NUL...) are dropped, so the words can be stored as text."""
    text = _ASS_OVERRIDE.sub("", raw) if "{" in raw else raw
    if "\\" in text:
        text = text.replace("\\N", "\n").replace("\\n", "\n").replace("\\h", " ")
    if "\r" in text:
        text = text.replace("\r", "\n")
    if "<" in text:  # tags never span lines
        text = _DANGLING_TAG.sub("", _HTML_TAG.sub("", text))
    if "&" in text:
        text = html.unescape(_LONG_DECIMAL_REF.sub(_bounded_decimal_ref, text))
    words = " ".join(text.split())
    return words if words.isprintable() else " ".join(_CONTROL_CHARS.sub("", words).split())


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


def _timed_blocks(text: str, *, vtt: bool) -> Iterator[tuple[_Times | None, str]]:
    """(times, raw text) of each SRT/WebVTT cue: the lines after each timing line; (None, "") for each other
    line with an arrow, so the caller's bound on cues covers every line looked at.

    SRT: up to the next timing line, less trailing blank lines and the next cue's number (players show
    blank lines inside a cue). WebVTT: up to the first blank line; what follows (an id, NOTE, STYLE,
    REGION blocks) is not cue text. Either way, a cue number right above the next timing line with no
    blank line before it is not text."""
    arrow_lines = _timing_lines(text, MAX_CUES + 1)
    timings = [timing for timing in arrow_lines if timing is not None]
    yield from ((None, "") for _ in range(len(arrow_lines) - len(timings)))
    ends = [timing.start() for timing in timings[1:]] + [len(text)] if timings else []
    last = len(timings) - 1
    for i, (timing, end) in enumerate(zip(timings, ends, strict=True)):
        body = text[timing.end():end]
        if vtt and (blank := _BLANK_LINE.search(body)) is not None:
            body = body[:blank.start()]
        else:
            head, _, tail = body.rstrip().rpartition("\n")
            tail = tail.strip()
            body = head if i < last and tail.isascii() and tail.isdigit() else f"{head}\n{tail}"
        yield timing.groups(), body


def _timing_lines(text: str, limit: int) -> list[re.Match[str] | None]:
    """The first ``limit`` lines with ``-->``: their timing, or None where it is not one. Found by
    ``str.find`` (fast: most lines have no arrow); each line is looked at once, so this stays linear
    however many arrows the text holds."""
    found: list[re.Match[str] | None] = []
    line_start = 0
    while len(found) < limit and (arrow := text.find("-->", line_start)) >= 0:
        start = text.rfind("\n", line_start, arrow) + 1 or line_start
        end = text.find("\n", arrow)
        end = len(text) if end < 0 else end
        found.append(_TIMING_LINE.fullmatch(text, start, end))
        line_start = end + 1
    return found


def _ass_events(text: str) -> Iterator[tuple[_Times | None, str]]:
    """(times, raw text) of each ``Dialogue`` line of the ``[Events]`` section (Comment lines skipped);
    (None, "") for each other line read (section, Format, a broken Dialogue), so the caller's bound on
    cues covers them too."""
    columns = _ass_columns(_ASS_DEFAULT_FIELDS)
    in_events = True  # lenient: Dialogue lines before any section header count
    for line in _ASS_LINE.finditer(text):
        section, key, rest = line.groups()
        times, raw = None, ""
        if section is not None:
            in_events = section.strip().lower() == "events"
        elif in_events and key.lower() == "format":  # real ones name 10 fields
            columns = _ass_columns([name.strip().lower() for name in rest.split(",", _ASS_MAX_FIELDS)])
        elif in_events and columns is not None:
            count, start_at, end_at, text_at = columns
            values = rest.split(",", count - 1)
            if len(values) == count:
                start, end = _ASS_TIME.fullmatch(values[start_at]), _ASS_TIME.fullmatch(values[end_at])
                if start is not None and end is not None:
                    times, raw = start.groups() + end.groups(), values[text_at]
        yield times, raw


def _ass_columns(fields: Sequence[str]) -> tuple[int, int, int, int] | None:
    """(number of fields, index of Start, of End, of Text) of a Format line; None if one is missing."""
    if not {"start", "end", "text"} <= set(fields):
        return None
    return len(fields), fields.index("start"), fields.index("end"), fields.index("text")


def _seconds(hours: str | None, minutes: str, seconds: str, fraction: str | None) -> float:
    """Seconds of a timestamp's digits (start or end half of ``_Times``), to the millisecond."""
    millis = int(minutes) * 60_000 + int(seconds) * 1000
    if hours:
        millis += int(hours) * 3_600_000
    if fraction:
        millis += int(fraction[:3].ljust(3, "0"))
    return millis / 1000.0


def _bounded_decimal_ref(match: re.Match[str]) -> str:
    """``&#`` + 8 or more digits: past U+10FFFF unless zero-padded, so U+FFFD as html.unescape would give."""
    significant = match.group(1).lstrip("0")
    return f"&#{significant or '0'}{match.group(2)}" if len(significant) < 8 else "\ufffd"


def _format_id(text: str, fmt: str | None, filename: str | None, field: str) -> str | None:
    """Format id (srt, vtt, ass, ssa) from the explicit format, the file name, or the content (None: none)."""
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
    if head.startswith("[Script Info]") or "[Events]" in head:
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
