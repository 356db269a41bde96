"""Compilations: pieces of stored videos joined into one MP4, by stream copy where that is exact, else by one
ffmpeg filter graph.

``compose`` first ffprobes each distinct source (``SourceParams``) and checks the pieces and options (a bad
request is a ``ValueError`` the API layer turns into INVALID_ARGUMENT). Then one of two ways, both a single
ffmpeg run (``needs_render`` decides, purely):

- **stream copy** when every source carries the same codec parameters (``SourceParams.copy_key``: codec,
  profile, size, pixel format, frame rate, SAR, rotation and the decoder configuration itself, the extradata
  hash; the same for audio, or no audio anywhere) and nothing asks for new pictures or sound (no crossfade,
  title, music, fades, other size or rate). ffmpeg's concat demuxer cuts with ``inpoint``/``outpoint`` and
  ``-c copy``. A copy can only start on a keyframe, so each in point is moved back to the source keyframe at
  or before the requested start (packet flags from ffprobe, no decoding); the spans actually used are
  reported. Seconds for any length: it only moves bytes.
- **filter graph** otherwise: every piece is its own input, opened at its in point (``-ss``/``-t`` before
  ``-i``: ffmpeg seeks to the keyframe before and decodes only from there, where a ``trim`` over the whole
  source would decode everything before the in point, once per piece), normalized to the output's size
  (letterboxed), rate, square pixels, yuv420p and 48 kHz stereo (silence for a source without audio), then
  joined by ``concat`` or ``xfade``/``acrossfade`` chains behind an optional title card, with the music looped
  under the clips' audio and ducked by it (``sidechaincompress`` keyed by the clips' own audio), fades, and
  ``loudnorm`` to the loudness target; encoded once (x264 veryfast CRF 23 + AAC, +faststart). Never one
  encode per piece and another for the whole: each pixel is encoded once.

The ffmpeg run is an asyncio subprocess with the same input restrictions as every other tool run here
(``probe.restricted``: local files, allow-listed demuxers; stream copy adds only ``concat`` for its own list
file). Progress comes from ``-progress pipe:1``; a cancelled or timed-out ``compose`` kills ffmpeg and removes
its partial output; an ffmpeg failure raises ``Internal`` with ffmpeg's last stderr lines.

Every decision above (the request's types and checks, copy or render, output size, rate and length, keyframe in
points, the filter graph and the concat list) is a pure function in ``services.media.compose_plan``; this module
runs the tools: ffprobe for ``SourceParams`` and keyframes, and the one ffmpeg run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from services.common.errors import DeadlineExceeded, FailedPrecondition, Internal, NotFound
from services.media.compose_plan import (
    DEFAULT_FPS,
    FILTER_GRAPH,
    STREAM_COPY,
    ComposeOptions,
    ComposeResult,
    Piece,
    SourceParams,
    check_request,
    concat_list,
    filter_graph,
    keyframe_at_or_before,
    needs_render,
    output_duration,
    render_plan,
)
from services.media.probe import (
    ALLOWED_DEMUXERS,
    PROBE_TIMEOUT_S,
    REASON_UNREADABLE_MEDIA,
    first_motion_video,
    media_error,
    run_tool,
    trim_stderr,
)

_KEYFRAME_TIMEOUT_S = 120.0
_STDERR_KEEP = 64 * 1024


# ---------------------------------------------------------------------------------------------- tools


async def probe_source(path: Path, *, field: str = "source") -> SourceParams:
    """ffprobe ``path`` for ``SourceParams``. A missing file is ``NotFound``; a file that is not a video is
    ``InvalidArgument`` (both name ``field``)."""
    if not path.is_file():
        raise NotFound(f"{field}: {path.name} does not exist", reason="COMPOSE_SOURCE_MISSING")
    result = await run_tool(["ffprobe", "-v", "error", "-show_data_hash", "sha256", "-print_format", "json",
                             "-show_format", "-show_streams", str(path)], PROBE_TIMEOUT_S)
    if result.returncode != 0:
        raise media_error(REASON_UNREADABLE_MEDIA, f"not a readable video ({result.stderr_text})", field)
    report: dict[str, Any] = json.loads(result.stdout)
    streams = report.get("streams") or []
    video = first_motion_video(streams)
    if video is None:
        raise media_error(REASON_UNREADABLE_MEDIA, "no video stream", field)
    audio: dict[str, Any] = next((s for s in streams if s.get("codec_type") == "audio"), {})
    return SourceParams(
        duration_s=_seconds(video.get("duration")) or _seconds((report.get("format") or {}).get("duration")) or 0.0,
        video_index=int(video.get("index", 0)),
        video_codec=str(video.get("codec_name", "")),
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        pix_fmt=str(video.get("pix_fmt", "")),
        rate=_rate(video),
        sar=_fraction(str(video.get("sample_aspect_ratio", "1:1")).replace(":", "/")) or Fraction(1),
        rotation=_rotation(video),
        video_profile=str(video.get("profile", "")),
        video_extradata=str(video.get("extradata_hash", "")),
        audio_codec=str(audio.get("codec_name", "")),
        sample_rate=int(audio.get("sample_rate") or 0),
        channels=int(audio.get("channels") or 0),
        audio_profile=str(audio.get("profile", "")),
        audio_extradata=str(audio.get("extradata_hash", "")),
    )


async def keyframe_times(path: Path, video_index: int) -> list[float]:
    """Presentation times of the video stream's keyframes, from packet flags (demuxing only, no decode)."""
    result = await run_tool(["ffprobe", "-v", "error", "-select_streams", str(video_index), "-show_entries",
                             "packet=pts_time,flags", "-of", "csv=p=0", str(path)], _KEYFRAME_TIMEOUT_S)
    if result.returncode != 0:
        raise media_error(REASON_UNREADABLE_MEDIA, f"keyframes unreadable ({result.stderr_text})", "source")
    times = []
    for line in result.stdout.decode("ascii", errors="replace").splitlines():
        pts, _, flags = line.partition(",")
        if "K" in flags and (seconds := _seconds(pts)) is not None:
            times.append(seconds)
    return sorted(times)


_filters: dict[str, bool] = {}


async def has_filter(name: str) -> bool:
    """Does this ffmpeg build have filter ``name`` (drawtext needs libfreetype)? Asked once per process."""
    if not _filters:
        result = await run_tool(["ffmpeg", "-hide_banner", "-filters"], PROBE_TIMEOUT_S)
        for line in result.stdout.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and "->" in parts[2]:
                _filters[parts[1]] = True
    return _filters.get(name, False)


def _seconds(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _fraction(text: str) -> Fraction | None:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _rate(stream: dict[str, Any]) -> Fraction:
    """The base frame rate (``r_frame_rate``), else the average one, else ``DEFAULT_FPS``."""
    for key in ("r_frame_rate", "avg_frame_rate"):
        rate = _fraction(str(stream.get(key, "0/1")))
        if rate is not None and rate < 1000:
            return rate
    return DEFAULT_FPS


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or []:
        if isinstance(side, dict) and side.get("rotation") is not None:
            return round(float(side["rotation"])) % 360
    return 0


# ---------------------------------------------------------------------------------------------- compose


async def compose(
    pieces: Sequence[Piece], options: ComposeOptions, out: Path, *,
    progress: Callable[[float], Awaitable[None]] | None = None, timeout_s: float = 3600,
) -> ComposeResult:
    """Write the compilation of ``pieces`` to ``out`` (MP4) and say how it was made.

    ``ValueError``: the request cannot be rendered (see ``check_request``); ``NotFound``: a source is missing;
    ``Internal``: ffmpeg failed (its last stderr lines in the message); ``DeadlineExceeded`` after
    ``timeout_s``. ``progress`` gets 0..1 as ffmpeg advances. Cancelling the caller kills ffmpeg."""
    check_request(pieces, {}, options)  # what needs no probe fails before any tool runs
    probes: dict[Path, SourceParams] = {}
    for n, piece in enumerate(pieces):
        if piece.source not in probes:
            probes[piece.source] = await probe_source(piece.source, field=f"pieces[{n}].source")
    if options.music is not None and not options.music.is_file():
        raise NotFound(f"music: {options.music.name} does not exist", reason="COMPOSE_MUSIC_MISSING")
    check_request(pieces, probes, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clipmind-compose-") as scratch:
        work = Path(scratch)
        partial = out.with_name(f".{out.name}.partial")
        if needs_render(probes, pieces, options):
            plan = render_plan(probes, pieces, options)
            title_file = None
            if options.title:
                title_file = work / "title.txt"
                title_file.write_text(_title_lines(options.title, plan.width, max(12, plan.height // 12)),
                                      encoding="utf-8")
            inputs, graph = filter_graph(plan, probes, pieces, options, title_file=title_file,
                                         drawtext=await has_filter("drawtext"))
            script = work / "graph.txt"  # a graph of many pieces is long: a file keeps it out of argv and ps
            script.write_text(graph, encoding="utf-8")
            args = ["ffmpeg", *inputs]
            args += ["-filter_complex_script", str(script), "-map", "[vout]", "-map", "[aout]",
                     "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                     "-c:a", "aac", "-b:a", "160k"]
            method, used = FILTER_GRAPH, [(p.start_s, p.end_s) for p in pieces]
            expected = output_duration(pieces, options)
        else:
            keyframes = {path: await keyframe_times(path, source.video_index) for path, source in probes.items()}
            starts = [keyframe_at_or_before(keyframes[p.source], p.start_s) for p in pieces]
            listing = work / "pieces.ffconcat"
            listing.write_text(concat_list(pieces, starts), encoding="utf-8")
            # the concat demuxer reads only our own list; every file it opens is held to the same allow-list
            args = ["ffmpeg", "-protocol_whitelist", "file,pipe", "-format_whitelist", f"concat,{ALLOWED_DEMUXERS}",
                    "-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0:v:0", "-map", "0:a:0?",
                    "-c", "copy"]
            method, used = STREAM_COPY, [(s, p.end_s) for s, p in zip(starts, pieces, strict=True)]
            expected = sum(end - start for start, end in used)
        args += ["-movflags", "+faststart", "-f", "mp4", "-y", str(partial)]
        args[1:1] = ["-nostdin", "-hide_banner", "-v", "error", "-nostats", "-progress", "pipe:1"]
        try:
            await _run_ffmpeg(args, expected, progress, timeout_s)
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
    done = await probe_source(out, field="output")
    return ComposeResult(out, done.duration_s, method, used)


async def _run_ffmpeg(
    args: list[str], expected_s: float, progress: Callable[[float], Awaitable[None]] | None, timeout_s: float,
) -> None:
    """Run ffmpeg, feed ``progress`` from its ``-progress`` lines, keep its stderr's tail; kill it on cancel or
    timeout (and wait for it, so no ffmpeg outlives the call)."""
    if shutil.which(args[0]) is None:
        raise FailedPrecondition(f"{args[0]} is not installed or not on PATH", reason="TOOL_NOT_FOUND")
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stderr = bytearray()

    async def read_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            stderr.extend(chunk)
            del stderr[:-_STDERR_KEEP]

    reported = -1.0

    async def read_progress() -> None:
        nonlocal reported
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            key, _, value = line.decode(errors="replace").strip().partition("=")
            if key == "out_time_us" and progress is not None and expected_s > 0:
                with contextlib.suppress(ValueError):
                    fraction = min(1.0, max(0.0, int(value) / 1e6 / expected_s))
                    if fraction - reported >= 0.01:
                        reported = fraction
                        await progress(fraction)

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(read_stderr(), read_progress())
            await proc.wait()
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise DeadlineExceeded(f"ffmpeg took longer than {timeout_s:.0f}s", reason="TOOL_TIMEOUT") from exc
        raise
    if proc.returncode != 0:
        tail = trim_stderr(bytes(stderr), limit=1500)
        raise Internal(f"ffmpeg failed ({proc.returncode}) rendering the compilation: {tail}",
                       reason="COMPOSE_FAILED")
    if progress is not None and reported < 1.0:
        await progress(1.0)


def _title_lines(title: str, width: int, font_size: int) -> str:
    """The title wrapped to the card's width (drawtext does not wrap): ~0.55 em per character of a sans font."""
    columns = max(8, int(width * 0.9 / (font_size * 0.55)))
    return "\n".join(textwrap.fill(line, columns) for line in title.splitlines() or [""])
