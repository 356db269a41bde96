"""Shot (scene) boundaries, keyframes and the poster thumbnail of a video from one ffmpeg decode.

Decoding (``frames.FrameSource``) is one ffmpeg process, with its own threads and the restricted input
arguments of every tool run; it streams ~256 px frames to the cut detector (``cuts.CutDetector``:
PySceneDetect's ``ContentDetector`` behind a flash gate) and, for ``analyse_video``, every few frames at keyframe
size (<= 480 px wide). A scene gets one keyframe per block of at most ``keyframe_interval_s`` seconds (at least
one; a long scene is not judged by one frame), each standing for its stretch of the scene
(``SceneFrame.start_s``/``end_s``); ``keyframes.KeyframePicker`` chooses them (the frame nearest each block's
middle) and the thumbnail (the frame nearest ``thumbnail_at_s``) and has each written as a JPEG as soon as it is
known, holding a bounded number of frames. Memory stays constant whatever the video's length.

``detect_scenes`` / ``analyse_video`` are synchronous and CPU-bound (the CPU is mostly ffmpeg's): from async
code use ``detect_scenes_async`` or ``MediaPass``, which run them in a worker thread and, when their task is
cancelled, stop ffmpeg and the thread before re-raising. ``cancel`` (a ``threading.Event``) stops a running
call within ~0.1 s; ``stall_timeout_s`` bounds how long ffmpeg may go without producing a frame.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from services.common.errors import Internal
from services.media.cuts import DEFAULT_MIN_SCENE_S, DEFAULT_THRESHOLD, CutDetector
from services.media.frames import (
    STALL_TIMEOUT_S,
    DecodeCancelled,
    FrameSource,
    VideoStream,
    bgr,
    probe_video_stream,
)
from services.media.keyframes import Keyframe, KeyframePicker
from services.media.probe import REASON_UNREADABLE_MEDIA, VideoStreamFacts, media_error

CANDIDATES_PER_S = 3
"""Keyframe candidates decoded at keyframe size per second of video: a keyframe is within 1/6 s of the middle
of the block of its scene it was chosen for (see ``keyframes``)."""
DEFAULT_KEYFRAME_INTERVAL_S = 4.0
"""A scene gets a keyframe per block of at most this many seconds (a last block under half of it joins the one
before): enough frames to judge a long scene by, few enough to embed."""
MIN_KEYFRAME_INTERVAL_S = 0.5
MAX_KEYFRAME_INTERVAL_S = 60.0
"""Bounds of ``keyframe_interval_s``: the picker holds about half a block of candidates, so the block must stay
bounded; under half a second, consecutive keyframes would be near copies."""
JPEG_QUALITY = 90
CANCEL_WAIT_S = 1.5
"""How long a cancelled ``detect_scenes_async`` / ``MediaPass`` waits for its worker thread to stop."""

SceneDetectionCancelled = DecodeCancelled
"""``detect_scenes`` / ``analyse_video`` stopped because their ``cancel`` event was set."""

T = TypeVar("T")


@dataclass(frozen=True)
class Scene:
    """One shot: ``index`` from 0, ``[start_s, end_s)`` in seconds."""

    index: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SceneFrame:
    """One keyframe of a scene: the JPEG, when it is shown, and the stretch of its scene it stands for."""

    path: Path
    time_s: float
    """The frame's own time."""
    start_s: float
    end_s: float
    """``[start_s, end_s)``: the part of the scene this frame stands for (the frame lies inside, within 1/6 s of
    the middle of its block: the span but for a short last block it absorbed)."""


@dataclass(frozen=True)
class SceneAnalysis:
    """What one pass over a video found: its scenes, the keyframes (JPEG files) of each, its thumbnail."""

    scenes: list[Scene]
    keyframes: list[list[SceneFrame]]
    """Per scene, at least one, in time order; their spans tile the scene exactly (the first starts at
    ``start_s``, each ends where the next starts, the last ends at ``end_s``). Every path is a distinct file."""
    thumbnail: Path
    frames: int = 0
    """Frames decoded (at the stream's rate)."""
    peak_frames_held: int = 0
    """Most keyframe candidates held at once (bounded whatever the video's length)."""

    def middle(self, scene_index: int) -> SceneFrame:
        """The scene's representative keyframe: the one whose span holds the scene's middle."""
        scene = self.scenes[scene_index]
        frames = self.keyframes[scene_index]
        at = (scene.start_s + scene.end_s) / 2
        return next((frame for frame in frames if frame.start_s <= at < frame.end_s), frames[-1])


def detect_scenes(
    path: str | os.PathLike[str],
    duration_s: float,
    threshold: float = DEFAULT_THRESHOLD,
    min_scene_s: float = DEFAULT_MIN_SCENE_S,
    *,
    field: str = "video",
    cancel: threading.Event | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    stream: VideoStreamFacts | None = None,
) -> list[Scene]:
    """Scenes covering ``[0, duration_s]`` contiguously (at least one), cut where the picture jumps.

    ``stream``: the video stream's facts from ``probe`` (``MediaInfo.video_stream``); without them the video
    is probed here first. Blocking: decodes the whole video. Raises ``InvalidArgument`` (UNREADABLE_MEDIA)
    when the file cannot be probed or no frame decodes, ``DeadlineExceeded`` (TOOL_TIMEOUT) when ffmpeg
    stalls, and ``SceneDetectionCancelled`` once ``cancel`` is set.
    """
    cuts = detect_cuts(path, threshold=threshold, min_scene_s=min_scene_s, field=field, cancel=cancel,
                       stall_timeout_s=stall_timeout_s, stream=stream)
    return scenes_from_cuts(cuts, duration_s, min_scene_s=min_scene_s)


def detect_cuts(
    path: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    min_scene_s: float = DEFAULT_MIN_SCENE_S,
    *,
    field: str = "video",
    cancel: threading.Event | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    stream: VideoStreamFacts | None = None,
) -> list[float]:
    """Times (seconds) of the first frame of every new shot after the first, ascending. Blocking."""
    cancel = cancel or threading.Event()
    video = _stream(path, field, cancel, stream)
    cuts = CutDetector(video.rate, threshold, min_scene_s)
    with FrameSource(path, video, cancel, stall_timeout_s=stall_timeout_s, field=field) as frames:
        while (frame := frames.analysis()) is not None:
            cuts.push(bgr(frame))
        frames.finish()
    return cuts.finish()


def analyse_video(
    path: str | os.PathLike[str],
    duration_s: float,
    out_dir: str | os.PathLike[str],
    *,
    thumbnail_at_s: float = 1.0,
    threshold: float = DEFAULT_THRESHOLD,
    min_scene_s: float = DEFAULT_MIN_SCENE_S,
    field: str = "video",
    cancel: threading.Event | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    on_thumbnail: Callable[[Path], None] | None = None,
    keyframe_interval_s: float = DEFAULT_KEYFRAME_INTERVAL_S,
    stream: VideoStreamFacts | None = None,
) -> SceneAnalysis:
    """``detect_scenes`` plus, from the same decode, the keyframes of each scene (one per block of at most
    ``keyframe_interval_s`` seconds, see ``SceneAnalysis.keyframes``) and the thumbnail (the frame nearest
    ``thumbnail_at_s``, clamped into the video) as JPEGs in ``out_dir`` (at most 480 px wide). ``on_thumbnail``
    gets the thumbnail's path as soon as it is written, while the decode goes on. ``stream``: as
    ``detect_scenes``'s (with ``probe``'s facts the pass runs no ffprobe of its own). Blocking; raises as
    ``detect_scenes`` does, and ``ValueError`` when ``keyframe_interval_s`` is outside
    ``[MIN_KEYFRAME_INTERVAL_S, MAX_KEYFRAME_INTERVAL_S]``."""
    if not MIN_KEYFRAME_INTERVAL_S <= keyframe_interval_s <= MAX_KEYFRAME_INTERVAL_S:
        raise ValueError(f"keyframe_interval_s must be within [{MIN_KEYFRAME_INTERVAL_S}, "
                         f"{MAX_KEYFRAME_INTERVAL_S}] s, got {keyframe_interval_s}")
    cancel = cancel or threading.Event()
    stream = _stream(path, field, cancel, stream)
    cuts = CutDetector(stream.rate, threshold, min_scene_s)
    every = max(1, min(round(stream.rate / CANDIDATES_PER_S), cuts.min_scene_frames))
    writer = _JpegWriter(Path(out_dir))
    picker = KeyframePicker(writer.write, every=every, lag=cuts.lag,
                            block=max(1, round(keyframe_interval_s * stream.rate)),
                            thumbnail_at=round(max(0.0, thumbnail_at_s) * stream.rate), on_thumbnail=on_thumbnail)
    min_gap, boundary = max(min_scene_s, 0.001), 0.0  # a cut scenes_from_cuts keeps is a scene for the picker
    with FrameSource(path, stream, cancel, stall_timeout_s=stall_timeout_s, field=field,
                     candidates_every=every) as frames:
        while (frame := frames.analysis()) is not None:
            index = frames.analysis_frames - 1
            if index % every == 0 and (candidate := frames.candidate()) is not None:
                picker.offer(index, candidate)
            for cut in cuts.push(bgr(frame)):
                if float(cut / stream.rate) - boundary >= min_gap:
                    picker.cut(cut)
                    boundary = round(float(cut / stream.rate), 6)
            picker.advance(index)
        frames.finish()
    scenes = scenes_from_cuts(cuts.finish(), duration_s, min_scene_s=min_scene_s)
    try:
        picked = picker.finish([(s.start_s * stream.rate, s.end_s * stream.rate) for s in scenes])
    except LookupError:
        raise media_error(REASON_UNREADABLE_MEDIA, "no video frame could be decoded", field) from None
    assert picker.thumbnail is not None
    paths = iter(writer.distinct([frame.handle for frames in picked for frame in frames]))
    rate = float(stream.rate)
    keyframes = [_scene_frames(scene, frames, paths, rate) for scene, frames in zip(scenes, picked, strict=True)]
    return SceneAnalysis(scenes, keyframes, picker.thumbnail, frames.analysis_frames, picker.peak_held)


def _scene_frames(scene: Scene, picked: list[Keyframe[Path]], paths: Iterator[Path], rate: float) -> list[SceneFrame]:
    """``picked`` (spans in frames, tiling the scene) in seconds, taking their distinct paths from ``paths``: the
    first span starts and the last ends exactly at the scene's bounds (frames to seconds and back need not)."""
    bounds = [scene.start_s, *(round(frame.start / rate, 6) for frame in picked[1:]), scene.end_s]
    return [SceneFrame(next(paths), round(frame.index / rate, 6), start, end)
            for frame, (start, end) in zip(picked, pairwise(bounds), strict=True)]


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


# --- async ---------------------------------------------------------------------------------------------


async def detect_scenes_async(
    path: str | os.PathLike[str],
    duration_s: float,
    threshold: float = DEFAULT_THRESHOLD,
    min_scene_s: float = DEFAULT_MIN_SCENE_S,
    *,
    field: str = "video",
    executor: Executor | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    stream: VideoStreamFacts | None = None,
) -> list[Scene]:
    """``detect_scenes`` off the event loop (in ``executor``, default: the loop's thread pool).

    Cancelling the awaiting task stops the work too: ffmpeg is killed and the thread ends (waited for up
    to ``CANCEL_WAIT_S``) before ``CancelledError`` propagates."""
    cancel = threading.Event()
    job = partial(detect_scenes, path, duration_s, threshold, min_scene_s, field=field, cancel=cancel,
                  stall_timeout_s=stall_timeout_s, stream=stream)
    future = asyncio.get_running_loop().run_in_executor(executor, job)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await _stop_worker(future, cancel)
        raise


class MediaPass:
    """``analyse_video`` in a worker thread, as an async context manager: ``thumbnail()`` answers as soon as
    the poster frame is decoded (early in the pass), ``result()`` when the pass is over. Leaving the block
    before the pass ends (an error, a cancelled task) stops ffmpeg and the thread, as ``detect_scenes_async``
    does. Arguments as ``analyse_video``'s (pass ``stream=info.video_stream`` from ``probe``: no second ffprobe)."""

    def __init__(self, path: str | os.PathLike[str], duration_s: float, out_dir: str | os.PathLike[str], *,
                 executor: Executor | None = None, **options: Any) -> None:
        self._job = partial(analyse_video, path, duration_s, out_dir, **options)
        self._executor = executor
        self._cancel = threading.Event()

    async def __aenter__(self) -> MediaPass:
        loop = asyncio.get_running_loop()
        self._thumbnail: asyncio.Future[Path] = loop.create_future()

        def thumbnail_written(path: Path) -> None:  # in the worker thread
            loop.call_soon_threadsafe(self._set_thumbnail, path)

        self._work = loop.run_in_executor(
            self._executor, partial(self._job, cancel=self._cancel, on_thumbnail=thumbnail_written))
        return self

    def _set_thumbnail(self, path: Path) -> None:
        if not self._thumbnail.done():
            self._thumbnail.set_result(path)

    async def thumbnail(self) -> Path:
        """The thumbnail JPEG; raises what the pass raised if it failed first."""
        either: list[asyncio.Future[Any]] = [self._thumbnail, self._work]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if self._thumbnail.done():
            return self._thumbnail.result()
        return self._work.result().thumbnail

    async def result(self) -> SceneAnalysis:
        return await asyncio.shield(self._work)

    async def __aexit__(self, *exc: object) -> None:
        if not self._work.done():
            await _stop_worker(self._work, self._cancel)
        elif not self._work.cancelled():
            self._work.exception()  # retrieved: an error nobody awaited is not logged as lost


async def _stop_worker(future: asyncio.Future[T], cancel: threading.Event) -> None:
    """Stop a ``detect_scenes`` / ``analyse_video`` thread: set its ``cancel``, wait up to ``CANCEL_WAIT_S``."""
    cancel.set()
    # Whatever the thread ends with (SceneDetectionCancelled, as a rule) is nobody's business now.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    await asyncio.wait([future], timeout=CANCEL_WAIT_S)


# --- helpers ------------------------------------------------------------------------------------------


def _stream(path: str | os.PathLike[str], field: str, cancel: threading.Event,
            facts: VideoStreamFacts | None) -> VideoStream:
    """The stream to decode: from ``probe``'s facts when given, else from an ffprobe of its own."""
    if cancel.is_set():  # cancelled while queued for a worker thread
        raise SceneDetectionCancelled()
    return VideoStream.of(facts) if facts is not None else probe_video_stream(path, field, cancel)


class _JpegWriter:
    """Writes frames as JPEG files in ``folder``, each under a new name."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._count = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, frame: np.ndarray) -> Path:
        """Frame ``index`` (I420, as ``FrameSource`` gives it) as a JPEG file; its path."""
        ok, data = cv2.imencode(".jpg", bgr(frame), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise Internal(f"could not encode frame {index} as JPEG", reason="FRAME_EXTRACT_FAILED")
        path = self._folder / f"frame-{self._count:05d}-{index:08d}.jpg"
        self._count += 1
        path.write_bytes(data.tobytes())
        return path

    def distinct(self, paths: list[Path]) -> list[Path]:
        """``paths`` with every repeat replaced by a copy (every keyframe of every scene is its own file: the
        pipeline moves each into blob storage)."""
        seen: set[Path] = set()
        out = []
        for path in paths:
            if path in seen:
                copy = self._folder / f"frame-{self._count:05d}-copy.jpg"
                self._count += 1
                shutil.copyfile(path, copy)
                path = copy
            seen.add(path)
            out.append(path)
        return out
