"""Decoding user media into what the stages consume: a JPEG frame at a time (``extract_frame``) and the
audio track as PCM windows (``audio_windows``). Both run ffmpeg through ``media.restricted`` arguments
(local files, allow-listed demuxers only) as asyncio subprocesses that are killed on timeout or cancel."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np

from services.common.errors import DeadlineExceeded, FailedPrecondition, Internal
from services.media.probe import (
    FRAME_TIMEOUT_S,
    REASON_UNREADABLE_MEDIA,
    media_error,
    probe,
    restricted,
    run_tool,
)


async def extract_frame(
    path: str | os.PathLike[str],
    at_s: float,
    out_path: str | os.PathLike[str],
    max_width: int = 480,
    *,
    duration_s: float | None = None,
) -> None:
    """Write the frame shown at ``at_s`` (clamped into the video) as a JPEG at most ``max_width`` wide.

    ``duration_s`` saves a probe when the caller already knows it. Seeking is frame-accurate; if no frame
    comes out at the requested time (past the last frame), earlier times are tried.
    """
    if duration_s is None:
        duration_s = (await probe(path)).duration_s
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    last_error = ""
    for at in _frame_times(at_s, duration_s):
        result = await run_tool(
            [
                "ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{at:.3f}", "-i", str(path),
                "-map", "0:v:0", "-frames:v", "1", "-an", "-sn", "-dn",
                "-vf", f"scale='min({max_width},iw*sar)':-2,setsar=1",
                "-q:v", "3", "-f", "image2", "-c:v", "mjpeg", "-update", "1", str(partial),
            ],
            FRAME_TIMEOUT_S,
        )  # fmt: skip
        if result.returncode == 0 and partial.exists() and partial.stat().st_size > 0:
            partial.replace(out)
            return
        last_error = result.stderr_text
    partial.unlink(missing_ok=True)
    raise Internal(f"could not extract a frame near {at_s:.2f}s: {last_error}", reason="FRAME_EXTRACT_FAILED")


def _frame_times(at_s: float, duration_s: float) -> list[float]:
    """Times to try for a thumbnail: the clamped request, then a bit earlier, then the start."""
    latest = max(0.0, duration_s - 0.05)
    at = min(max(0.0, at_s), latest)
    return sorted({at, max(0.0, at - 1.0), 0.0}, reverse=True)


QUIET_FRAME_S = 0.05
"""Length of the frames whose loudness ``quiet_cut`` compares."""


def quiet_cut(samples: np.ndarray, sample_rate: int, search_s: float) -> int:
    """Where to end a window of ``samples``: the middle of its quietest ``QUIET_FRAME_S`` frame within the
    last ``search_s`` seconds (the latest such frame on a tie), so a window boundary falls between words
    rather than through one; ``len(samples)`` when the window is too short to search."""
    frame = max(1, int(QUIET_FRAME_S * sample_rate))
    begin = max(0, len(samples) - int(search_s * sample_rate))
    count = (len(samples) - begin) // frame
    if search_s <= 0 or count < 2:
        return len(samples)
    tail = samples[len(samples) - count * frame:].reshape(count, frame)
    energy = np.einsum("ij,ij->i", tail, tail)
    quietest = count - 1 - int(np.argmin(energy[::-1]))
    return len(samples) - count * frame + quietest * frame + frame // 2


async def audio_windows(
    path: str | Path, sample_rate: int = 16_000, window_s: float = 30.0, *, stall_timeout_s: float = 300.0,
    cut_search_s: float = 0.0,
) -> AsyncGenerator[np.ndarray, None]:
    """The first audio stream as mono float32 PCM at ``sample_rate``, in consecutive windows of at most
    ``window_s`` seconds (the last one shorter), decoded as they are consumed: memory holds one window, not
    the whole track. With ``cut_search_s`` each window ends at its quietest moment within its last
    ``cut_search_s`` seconds (``quiet_cut``) and the rest starts the next one: windows then vary in length,
    and their lengths add up to the track's.

    ffmpeg waits on the pipe while the consumer works on a window; ``stall_timeout_s`` bounds how long
    one window may take to arrive. A decode error raises ``InvalidArgument`` (UNREADABLE_MEDIA) after the
    windows decoded before it."""
    args = restricted(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-vn", "-ac", "1",
                        "-ar", str(sample_rate), "-f", "f32le", "-"])
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise FailedPrecondition("ffmpeg is not installed or not on PATH", reason="TOOL_NOT_FOUND") from exc
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())  # drained alongside, so ffmpeg never blocks on it
    window = int(window_s * sample_rate)
    carried = np.empty(0, dtype=np.float32)
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(proc.stdout.readexactly((window - len(carried)) * 4), stall_timeout_s)
            except asyncio.IncompleteReadError as end:
                rest = np.concatenate([carried, np.frombuffer(end.partial[: len(end.partial) // 4 * 4], np.float32)])
                if len(rest):
                    yield rest
                break
            except TimeoutError as exc:
                raise DeadlineExceeded(f"ffmpeg produced no audio for {stall_timeout_s:.0f}s",
                                       reason="TOOL_TIMEOUT") from exc
            samples = np.concatenate([carried, np.frombuffer(chunk, dtype=np.float32)])
            cut = quiet_cut(samples, sample_rate, cut_search_s)
            carried = samples[cut:].copy()
            yield samples[:cut].copy()
        if await proc.wait() != 0:
            stderr = (await errors).decode("utf-8", errors="replace")
            raise media_error(REASON_UNREADABLE_MEDIA, f"cannot decode audio: {stderr[-300:]}", "video")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
        errors.cancel()
