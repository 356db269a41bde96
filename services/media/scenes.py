"""Shot (scene) boundaries with PySceneDetect's ``ContentDetector`` on frames decoded by ffmpeg.

``ContentDetector`` compares consecutive frames in HSV and cuts where the change passes ``threshold``;
its flash filter (MERGE mode) folds cuts closer than ``min_scene_s`` into one, so muzzle flashes and
explosions do not explode the scene count while real hard cuts keep frame accuracy.
(``AdaptiveDetector`` was tried on tears_of_steel: it missed about a third of the visible hard cuts.)

Decoding is one ffmpeg subprocess with the same input restrictions as every other tool run
(``media.restricted``: local files, allow-listed demuxers), never a library that opens the file itself.
ffmpeg downscales to the size PySceneDetect's auto-downscale would use (larger side ~256 px), resamples to
the stream's frame rate (frame *n* is at *n* / rate seconds), and writes raw BGR frames to a pipe; the
detector reads them one by one. Decoding dominates the cost. (``fast_bilinear`` is the swscale filter
whose frame scores come closest to the OpenCV decode + ``INTER_LINEAR`` resize used before: within ~0.5%
on real footage, so only cuts scored within a hair of ``threshold`` can differ, by a frame or by one cut.)

``detect_scenes`` is synchronous and CPU-bound (the CPU is mostly ffmpeg's): from async code use
``detect_scenes_async``, which runs it in a worker thread and, when its task is cancelled, stops ffmpeg
and the thread before re-raising. ``cancel`` (a ``threading.Event``) stops a running ``detect_scenes``
within ~0.1 s; ``stall_timeout_s`` bounds how long ffmpeg may go without producing a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Generator, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from itertools import pairwise
from typing import IO, Any

import numpy as np

from services.common.errors import DeadlineExceeded, FailedPrecondition
from services.media.probe import (
    PROBE_TIMEOUT_S,
    REASON_UNREADABLE_MEDIA,
    first_motion_video,
    media_error,
    restricted,
    trim_stderr,
)

DEFAULT_THRESHOLD = 27.0
DEFAULT_MIN_SCENE_S = 0.6
ANALYSIS_WIDTH = 256
"""Frames are compared at about this size on their larger side (PySceneDetect's auto-downscale)."""
STALL_TIMEOUT_S = 120.0
"""Longest ffmpeg may go without producing a frame before the detection fails (DEADLINE_EXCEEDED)."""
CANCEL_WAIT_S = 1.5
"""How long a cancelled ``detect_scenes_async`` waits for its worker thread to stop."""
_POLL_S = 0.1
_DEFAULT_RATE = Fraction(25)


class SceneDetectionCancelled(Exception):
    """``detect_scenes`` stopped because its ``cancel`` event was set."""


@dataclass(frozen=True)
class Scene:
    """One shot: ``index`` from 0, ``[start_s, end_s)`` in seconds."""

    index: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def detect_scenes(
    path: str | os.PathLike[str],
    duration_s: float,
    threshold: float = DEFAULT_THRESHOLD,
    min_scene_s: float = DEFAULT_MIN_SCENE_S,
    *,
    field: str = "video",
    cancel: threading.Event | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> list[Scene]:
    """Scenes covering ``[0, duration_s]`` contiguously (at least one), cut where the picture jumps.

    Blocking: decodes the whole video. Raises ``InvalidArgument`` (UNREADABLE_MEDIA) when the file cannot
    be probed or no frame decodes, ``DeadlineExceeded`` (TOOL_TIMEOUT) when ffmpeg stalls, and
    ``SceneDetectionCancelled`` once ``cancel`` is set.
    """
    cuts = detect_cuts(path, threshold=threshold, min_scene_s=min_scene_s, field=field, cancel=cancel,
                       stall_timeout_s=stall_timeout_s)
    return scenes_from_cuts(cuts, duration_s, min_scene_s=min_scene_s)


async def detect_scenes_async(
    path: str | os.PathLike[str],
    duration_s: float,
    threshold: float = DEFAULT_THRESHOLD,
    min_scene_s: float = DEFAULT_MIN_SCENE_S,
    *,
    field: str = "video",
    executor: Executor | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> list[Scene]:
    """``detect_scenes`` off the event loop (in ``executor``, default: the loop's thread pool).

    Cancelling the awaiting task stops the work too: ffmpeg is killed and the thread ends (waited for up
    to ``CANCEL_WAIT_S``) before ``CancelledError`` propagates."""
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    job = partial(detect_scenes, path, duration_s, threshold, min_scene_s, field=field, cancel=cancel,
                  stall_timeout_s=stall_timeout_s)
    future = loop.run_in_executor(executor, job)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        # Whatever the thread ends with (SceneDetectionCancelled, as a rule) is nobody's business now.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.wait([future], timeout=CANCEL_WAIT_S)
        raise


def detect_cuts(
    path: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    min_scene_s: float = DEFAULT_MIN_SCENE_S,
    *,
    field: str = "video",
    cancel: threading.Event | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> list[float]:
    """Times (seconds) of the first frame of every new shot after the first, ascending. Blocking."""
    from scenedetect import ContentDetector, FrameTimecode

    cancel = cancel or threading.Event()
    if cancel.is_set():  # cancelled while queued for a worker thread
        raise SceneDetectionCancelled()
    stream = _probe_video_stream(path, field, cancel)
    min_scene_frames = max(1, round(min_scene_s * float(stream.rate)))
    detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_frames)
    cuts: list[Any] = []
    position = None
    with contextlib.closing(_decode_frames(path, stream, cancel, stall_timeout_s, field)) as frames:
        for index, frame in enumerate(frames):
            position = FrameTimecode(index, fps=stream.rate)
            cuts += detector.process_frame(position, frame)
    if position is None:
        raise media_error(REASON_UNREADABLE_MEDIA, "no video frame could be decoded", field)
    cuts += detector.post_process(position)
    return [cut.seconds for cut in sorted(set(cuts)) if cut.frame_num > 0]


def scenes_from_cuts(cuts: Iterable[float], duration_s: float, min_scene_s: float = 0.0) -> list[Scene]:
    """Contiguous scenes over ``[0, duration_s]`` split at ``cuts`` (pure).

    Cuts outside ``(0, duration_s)`` are ignored; a cut closer than ``min_scene_s`` (or 1 ms) to the
    previous boundary or to the end is dropped, so no scene is empty or a sliver.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    min_gap = max(min_scene_s, 0.001)
    if duration_s < 2 * min_gap:
        return [Scene(0, 0.0, duration_s)]
    boundaries = [0.0]
    for cut in sorted(cuts):
        if cut - boundaries[-1] >= min_gap and duration_s - cut >= min_gap:
            boundaries.append(round(cut, 6))
    boundaries.append(duration_s)
    return [Scene(n, start, end) for n, (start, end) in enumerate(pairwise(boundaries))]


# --- decoding ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VideoStream:
    """The stream to decode: absolute ``index``, stored size, frame rate, and the analysis frame size."""

    index: int
    width: int
    height: int
    rate: Fraction

    @property
    def analysis_size(self) -> tuple[int, int]:
        """PySceneDetect's auto-downscale: the larger side to ~``ANALYSIS_WIDTH``, never upscaled."""
        largest = max(self.width, self.height)
        if largest < ANALYSIS_WIDTH:
            return self.width, self.height
        factor = largest / ANALYSIS_WIDTH
        return max(1, round(self.width / factor)), max(1, round(self.height / factor))


def _probe_video_stream(path: str | os.PathLike[str], field: str, cancel: threading.Event) -> _VideoStream:
    """ffprobe (restricted, like every tool run) for the first moving-picture stream."""
    args = restricted(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", os.fspath(path)])
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise FailedPrecondition("ffprobe is not installed or not on PATH", reason="TOOL_NOT_FOUND") from exc
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    try:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                if cancel.is_set():
                    raise SceneDetectionCancelled() from None
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded(f"ffprobe took longer than {PROBE_TIMEOUT_S:.0f}s",
                                           reason="TOOL_TIMEOUT") from None
    finally:
        _stop(proc)
    if proc.returncode != 0:
        message = trim_stderr(stderr).replace(os.fspath(path), os.path.basename(path))
        raise media_error(REASON_UNREADABLE_MEDIA, f"video cannot be decoded ({message})", field)
    try:
        streams = json.loads(stdout).get("streams") or []
    except (json.JSONDecodeError, AttributeError):
        streams = []
    video = first_motion_video(streams)
    width, height = (int(video.get("width") or 0), int(video.get("height") or 0)) if video else (0, 0)
    if video is None or width <= 0 or height <= 0:
        raise media_error(REASON_UNREADABLE_MEDIA, "no decodable video stream", field)
    return _VideoStream(int(video.get("index", 0)), width, height, _guess_rate(video))


def _guess_rate(stream: dict[str, Any]) -> Fraction:
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


def _decode_frames(
    path: str | os.PathLike[str], stream: _VideoStream, cancel: threading.Event, stall_timeout_s: float,
    field: str,
) -> Generator[np.ndarray, None, None]:
    """Frames of ``stream`` as ``(height, width, 3)`` BGR arrays at ``analysis_size``, one per 1/rate s.

    ffmpeg is killed as soon as the caller stops iterating, ``cancel`` is set or the stall timeout passes.
    A decode error ends the frames early (what decoded is used, as a player would show it); an error
    before any frame raises ``InvalidArgument``."""
    if cancel.is_set():
        raise SceneDetectionCancelled()
    width, height = stream.analysis_size
    args = restricted([
        "ffmpeg", "-nostdin", "-v", "error", "-noautorotate", "-i", os.fspath(path),
        "-map", f"0:{stream.index}", "-an", "-sn", "-dn",
        "-vf", f"scale={width}:{height}:flags=fast_bilinear", "-fps_mode", "cfr", "-r", str(stream.rate),
        "-pix_fmt", "bgr24", "-f", "rawvideo", "pipe:1",
    ])  # fmt: skip
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        except FileNotFoundError as exc:
            raise FailedPrecondition("ffmpeg is not installed or not on PATH", reason="TOOL_NOT_FOUND") from exc
        assert proc.stdout is not None
        frames = 0
        try:
            while (frame := _read_frame(proc.stdout, width * height * 3, cancel, stall_timeout_s)) is not None:
                frames += 1
                yield np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 3)
                if cancel.is_set():
                    raise SceneDetectionCancelled()
            try:
                returncode = proc.wait(timeout=stall_timeout_s)
            except subprocess.TimeoutExpired:
                returncode = -1  # closed its output but hangs: what it sent is all there is
            if returncode != 0 and frames == 0:
                errors.seek(0)
                stderr = trim_stderr(errors.read()).replace(os.fspath(path), os.path.basename(path))
                raise media_error(REASON_UNREADABLE_MEDIA, f"video cannot be decoded ({stderr})", field)
        finally:
            _stop(proc)


def _read_frame(pipe: IO[bytes], size: int, cancel: threading.Event, stall_timeout_s: float) -> bytearray | None:
    """Exactly ``size`` bytes from ``pipe``, or None at its end (a partial last frame is dropped).

    Waits in short polls so ``cancel`` is seen within ``_POLL_S`` even while ffmpeg produces nothing."""
    frame = bytearray(size)
    view = memoryview(frame)
    got = 0
    fd = pipe.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    stalled_at = time.monotonic() + stall_timeout_s
    while got < size:
        if cancel.is_set():
            raise SceneDetectionCancelled()
        if not poller.poll(_POLL_S * 1000):
            if time.monotonic() >= stalled_at:
                raise DeadlineExceeded(f"ffmpeg produced nothing for {stall_timeout_s:.0f}s", reason="TOOL_TIMEOUT")
            continue
        count = os.readv(fd, [view[got:]])
        if count == 0:
            return None
        got += count
        stalled_at = time.monotonic() + stall_timeout_s
    return frame


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the tool if it still runs, reap it, close its pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
