"""Media facts and checks through ffprobe/ffmpeg, run as asyncio subprocesses.

``probe`` reads what a file holds (``MediaInfo``); ``validate_video`` adds a cheap real decode of the
first frame and of the last second so truncated uploads fail early; ``extract_frame`` writes a JPEG
thumbnail. Every ffmpeg/ffprobe here (and in ``scenes``/``subtitles``) reads through ``restricted`` args:
local files only, through ``ALLOWED_DEMUXERS`` only. ``media_types.container_extension`` and ``media_type`` decide a
stored blob's extension (from what ffprobe found, never from the client's filename) and the media type it
is served with. Every failure a user's file can cause is an ``InvalidArgument`` whose ``reason`` is one of
the ``REASON_*`` constants below and whose field violation names the request field (``field`` kwarg).
Failures of the tools themselves (missing binary, timeout, unwritable output) are not the user's fault
and surface as ``FailedPrecondition`` / ``DeadlineExceeded`` / ``Internal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
)
from services.media.media_types import container_extension

REASON_EMPTY_FILE = "EMPTY_FILE"
"""The file has zero bytes."""
REASON_UNREADABLE_MEDIA = "UNREADABLE_MEDIA"
"""ffprobe does not recognise the file as media at all (text, random bytes, unknown container)."""
REASON_NOT_A_VIDEO = "NOT_A_VIDEO"
"""Media without a moving-picture stream: audio only, a still image, cover art, subtitles only."""
REASON_NO_DURATION = "NO_DURATION"
"""The video stream has no known, positive duration."""
REASON_TRUNCATED_MEDIA = "TRUNCATED_MEDIA"
"""The file was cut short: its index is missing or its last part cannot be decoded."""

TEXT_SUBTITLE_CODECS = frozenset(
    {
        "subrip", "srt", "ass", "ssa", "webvtt", "mov_text", "text", "subviewer", "subviewer1",
        "microdvd", "sami", "realtext", "mpl2", "pjs", "vplayer", "jacosub", "stl",
    }
)  # fmt: skip
"""Subtitle codecs that carry text ffmpeg can convert to SRT."""
IMAGE_SUBTITLE_CODECS = frozenset({"hdmv_pgs_subtitle", "dvd_subtitle", "dvb_subtitle", "xsub"})
"""Subtitle codecs that carry bitmaps (need OCR; never a transcript source here)."""

_MP4_TOP_LEVEL_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"})
_NOT_MOTION_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})

PROBE_TIMEOUT_S = 30.0
DECODE_CHECK_TIMEOUT_S = 60.0
FRAME_TIMEOUT_S = 60.0
_STDERR_LIMIT = 600
_TAIL_CHECK_S = 1.0
_DEFAULT_RATE = Fraction(25)


@dataclass(frozen=True)
class SubtitleStream:
    """One subtitle stream of a container. ``index`` is the absolute stream index (``-map 0:<index>``)."""

    index: int
    codec: str
    language: str = ""
    title: str = ""
    is_text: bool = False
    is_default: bool = False
    is_forced: bool = False


@dataclass(frozen=True)
class VideoStreamFacts:
    """What a decode of the video stream needs to know (``frames.VideoStream`` adds the sizes it derives): the
    absolute stream ``index`` (``-map 0:<index>``), the size frames come out at (upright: a quarter-turned
    stream's sides swapped, as ffmpeg's autorotate turns the picture), ffmpeg's frame ``rate`` (``guess_rate``)
    and the sample aspect ratio (``sar``, of the upright picture)."""

    index: int
    width: int
    height: int
    rate: Fraction
    sar: Fraction = Fraction(1)


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a video file; durations in seconds, sizes in bytes."""

    duration_s: float
    width: int
    height: int
    frame_rate: float
    video_codec: str
    audio_codec: str
    has_audio: bool
    format_name: str
    size_bytes: int
    subtitle_streams: list[SubtitleStream] = field(default_factory=list)
    video_stream: VideoStreamFacts | None = None
    """The decode facts of the video stream (None when its size is unknown): with them a decode pass
    (``scenes.MediaPass``) needs no ffprobe of its own."""

    @property
    def container(self) -> str:
        """Alias of ``format_name`` (ffprobe's comma-separated demuxer names, e.g. ``mov,mp4,...``)."""
        return self.format_name

    @property
    def text_subtitle_streams(self) -> list[SubtitleStream]:
        return [s for s in self.subtitle_streams if s.is_text]

    @property
    def codecs(self) -> tuple[str, ...]:
        """Codec names of the first video, the first audio and every subtitle stream (present ones)."""
        names = (self.video_codec, self.audio_codec, *(s.codec for s in self.subtitle_streams))
        return tuple(name for name in names if name)

    @property
    def file_extension(self) -> str:
        """The extension a copy of this file is stored under (``container_extension``)."""
        return container_extension(self.format_name, self.codecs)


@dataclass(frozen=True)
class ProcessResult:
    """Exit status and captured output of one finished subprocess."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def stderr_text(self) -> str:
        return trim_stderr(self.stderr)


def trim_stderr(stderr: bytes, limit: int = _STDERR_LIMIT) -> str:
    """Decode tool stderr and keep its last ``limit`` characters (the end says what went wrong)."""
    text = stderr.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else "…" + text[-limit:]


# Demuxers ffmpeg/ffprobe may use on an uploaded file. Playlist and meta formats (hls, concat, …) are left
# out: a text "video" that is an HLS playlist would otherwise make ffmpeg read other files on this host.
ALLOWED_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv,asf,ogg,mpeg,mxf,h264,hevc,"
    "mp3,wav,aac,flac,image2,png_pipe,jpeg_pipe,webp_pipe,gif"
)


async def run_tool(args: list[str], timeout_s: float) -> ProcessResult:
    """Run ffmpeg/ffprobe (``args[0]``) without a shell, capture output, kill it on timeout.

    Inputs are restricted to local files and to ``ALLOWED_DEMUXERS``."""
    args = restricted(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise FailedPrecondition(f"{args[0]} is not installed or not on PATH", reason="TOOL_NOT_FOUND") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise DeadlineExceeded(f"{args[0]} took longer than {timeout_s:.0f}s", reason="TOOL_TIMEOUT") from exc
    assert proc.returncode is not None
    return ProcessResult(proc.returncode, stdout, stderr)


def restricted(args: list[str]) -> list[str]:
    """ffmpeg/ffprobe arguments that only read local files through ``ALLOWED_DEMUXERS``.

    Every process that opens user media goes through this (``run_tool``, ``audio_windows``, the scene
    decoder): no other demuxer, no network or other protocol, whatever the file's name or content says."""
    if Path(args[0]).name in ("ffmpeg", "ffprobe"):
        return [args[0], "-protocol_whitelist", "file,pipe", "-format_whitelist", ALLOWED_DEMUXERS, *args[1:]]
    return args


def media_error(reason: str, description: str, field_path: str) -> InvalidArgument:
    """An ``InvalidArgument`` about the media in request field ``field_path``."""
    return InvalidArgument(
        message=f"{field_path}: {description}",
        reason=reason,
        field_violations=[FieldViolation(field_path, description)],
    )


async def probe(path: str | os.PathLike[str], *, field: str = "video") -> MediaInfo:
    """Describe the video at ``path``; raise ``InvalidArgument`` if it is not a usable video."""
    file = Path(path)
    try:
        size = file.stat().st_size
    except FileNotFoundError as exc:
        raise media_error(REASON_UNREADABLE_MEDIA, "file does not exist", field) from exc
    if size == 0:
        raise media_error(REASON_EMPTY_FILE, "file is empty", field)
    result = await run_tool(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(file)],
        PROBE_TIMEOUT_S,
    )
    if result.returncode != 0:
        stderr = result.stderr_text.replace(str(file), file.name)  # no server paths in user messages
        if "moov atom not found" in stderr and _starts_with_mp4_box(file):
            raise media_error(REASON_TRUNCATED_MEDIA, "MP4 index (moov) missing: file is truncated", field)
        raise media_error(REASON_UNREADABLE_MEDIA, f"not a recognisable media file ({stderr})", field)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise Internal("ffprobe printed invalid JSON", reason="PROBE_OUTPUT_INVALID") from exc
    return media_info_from_probe(report, size_bytes=size, field=field)


def media_info_from_probe(report: dict[str, Any], *, size_bytes: int, field: str = "video") -> MediaInfo:
    """Build ``MediaInfo`` from ffprobe's ``-show_format -show_streams`` JSON (pure, testable)."""
    fmt: dict[str, Any] = report.get("format") or {}
    streams: list[dict[str, Any]] = report.get("streams") or []
    format_name = str(fmt.get("format_name", ""))
    if not streams or not format_name:
        raise media_error(REASON_UNREADABLE_MEDIA, "no media streams found", field)
    if format_name == "tty":
        raise media_error(REASON_UNREADABLE_MEDIA, "a text file, not media", field)
    if format_name == "image2" or format_name.endswith("_pipe"):
        raise media_error(REASON_NOT_A_VIDEO, "a still image, not a video", field)
    video = first_motion_video(streams)
    if video is None:
        kinds = sorted({_stream_kind(s) for s in streams})
        raise media_error(REASON_NOT_A_VIDEO, f"no video stream (found: {', '.join(kinds)})", field)
    duration = _stream_duration(video) or _positive_float(fmt.get("duration"))
    if not duration:
        raise media_error(REASON_NO_DURATION, "video duration is zero or unknown", field)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return MediaInfo(
        duration_s=duration,
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        frame_rate=_frame_rate(video),
        video_codec=str(video.get("codec_name", "")),
        audio_codec=str(audio.get("codec_name", "")) if audio else "",
        has_audio=audio is not None,
        format_name=format_name,
        size_bytes=size_bytes,
        subtitle_streams=[_subtitle_stream(s) for s in streams if s.get("codec_type") == "subtitle"],
        video_stream=video_stream_facts(video),
    )


async def validate_video(path: str | os.PathLike[str], field: str = "video") -> MediaInfo:
    """``probe`` plus a real decode of the first frame and of the last ~1 s (cheap on long videos)."""
    info = await probe(path, field=field)
    head = await _count_decoded_frames(path, start_s=0.0, max_frames=1)
    if head == 0:
        raise media_error(REASON_TRUNCATED_MEDIA, "the first video frame cannot be decoded", field)
    tail_start = max(0.0, info.duration_s - _TAIL_CHECK_S)
    if await _count_decoded_frames(path, start_s=tail_start, max_frames=None) == 0:
        raise media_error(
            REASON_TRUNCATED_MEDIA,
            f"no frame decodes after {tail_start:.2f}s of a {info.duration_s:.2f}s video: file is truncated",
            field,
        )
    return info


async def _count_decoded_frames(path: str | os.PathLike[str], start_s: float, max_frames: int | None) -> int:
    """Decode the first video stream from ``start_s`` (accurate seek) and count the frames that come out."""
    args = ["ffmpeg", "-nostdin", "-v", "error"]
    if start_s > 0:
        args += ["-ss", f"{start_s:.3f}"]
    args += ["-i", str(path), "-map", "0:v:0", "-an", "-sn", "-dn"]
    if max_frames is not None:
        args += ["-frames:v", str(max_frames)]
    args += ["-f", "framecrc", "-"]
    result = await run_tool(args, DECODE_CHECK_TIMEOUT_S)
    lines = result.stdout.decode("ascii", errors="replace").splitlines()
    return sum(1 for line in lines if line and not line.startswith("#"))


def _starts_with_mp4_box(file: Path) -> bool:
    """Does the file begin like an ISO-BMFF/QuickTime file (a known top-level box type at bytes 4..8)?"""
    with file.open("rb") as handle:
        head = handle.read(8)
    return head[4:8] in _MP4_TOP_LEVEL_BOXES


def _stream_kind(stream: dict[str, Any]) -> str:
    """Words for a stream in error messages: ``audio``, ``cover art``, ``subtitle``..."""
    if (stream.get("disposition") or {}).get("attached_pic"):
        return "cover art"
    return str(stream.get("codec_type", "unknown"))


def first_motion_video(streams: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first stream that is moving picture: not cover art, not text art."""
    for stream in streams:
        if stream.get("codec_type") != "video":
            continue
        if (stream.get("disposition") or {}).get("attached_pic"):
            continue
        if stream.get("codec_name") in _NOT_MOTION_CODECS:
            continue
        return stream
    return None


def _stream_duration(stream: dict[str, Any]) -> float | None:
    """A stream's duration: ``duration`` (MP4, ...) or the ``DURATION`` tag (Matroska/WebM)."""
    seconds = _positive_float(stream.get("duration"))
    if seconds:
        return seconds
    tags = stream.get("tags") or {}
    tag = tags.get("DURATION") or tags.get("duration")
    return _parse_clock(tag) if isinstance(tag, str) else None


def _parse_clock(text: str) -> float | None:
    """``HH:MM:SS.fffffffff`` → seconds (None when malformed or not positive)."""
    try:
        hours, minutes, seconds = text.strip().split(":")
        total = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return total if total > 0 else None


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number == number and number != float("inf") else None


def video_stream_facts(stream: dict[str, Any]) -> VideoStreamFacts | None:
    """The decode facts of ffprobe's ``stream`` (a video stream of ``-show_streams``); None without a size."""
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if width <= 0 or height <= 0:
        return None
    sar = _sar(stream)
    if _quarter_turned(stream):  # ffmpeg turns the picture upright (autorotate): frames come out transposed
        width, height, sar = height, width, 1 / sar
    return VideoStreamFacts(int(stream.get("index", 0)), width, height, guess_rate(stream), sar)


def guess_rate(stream: dict[str, Any]) -> Fraction:
    """The stream's frame rate as ffmpeg (and OpenCV) guess it: the base rate ``r_frame_rate``, unless it
    is implausibly high next to a plausible average rate."""
    rates = []
    for key in ("r_frame_rate", "avg_frame_rate"):
        try:
            rate = Fraction(str(stream.get(key, "0/1")))
        except (ValueError, ZeroDivisionError):
            rate = Fraction(0)
        rates.append(rate if 0 < rate < 1000 else Fraction(0))
    base, average = rates
    if base > 210 and 0 < average < 70:
        return average
    return base or average or _DEFAULT_RATE


def _quarter_turned(stream: dict[str, Any]) -> bool:
    """Does the stream's display matrix (or old ``rotate`` tag) turn it by 90 or 270 degrees?"""
    turns: list[Any] = [side.get("rotation") for side in stream.get("side_data_list") or []
                        if isinstance(side, dict)]
    turns.append((stream.get("tags") or {}).get("rotate"))
    for turn in turns:
        try:
            return round(float(turn)) % 180 == 90
        except (TypeError, ValueError):
            continue
    return False


def _sar(stream: dict[str, Any]) -> Fraction:
    """The sample aspect ratio (``"1:1"``, ``"4:3"``); 1 when absent, unknown (``0:1``) or absurd."""
    try:
        num, den = (int(part) for part in str(stream.get("sample_aspect_ratio", "1:1")).split(":"))
        sar = Fraction(num, den)
    except (ValueError, ZeroDivisionError):
        return Fraction(1)
    return sar if Fraction(1, 16) <= sar <= 16 else Fraction(1)


def _frame_rate(stream: dict[str, Any]) -> float:
    """Average frame rate, else the stream's base rate, else 0 (unknown)."""
    for key in ("avg_frame_rate", "r_frame_rate"):
        try:
            rate = Fraction(str(stream.get(key, "0/0")))
        except (ValueError, ZeroDivisionError):
            continue
        if 0 < rate < 1000:
            return float(rate)
    return 0.0


def _subtitle_stream(stream: dict[str, Any]) -> SubtitleStream:
    codec = str(stream.get("codec_name", ""))
    tags = stream.get("tags") or {}
    disposition = stream.get("disposition") or {}
    language = str(tags.get("language", ""))
    return SubtitleStream(
        index=int(stream.get("index", 0)),
        codec=codec,
        language="" if language == "und" else language,
        title=str(tags.get("title", "")),
        is_text=codec in TEXT_SUBTITLE_CODECS,
        is_default=bool(disposition.get("default")),
        is_forced=bool(disposition.get("forced")),
    )
