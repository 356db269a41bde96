"""One ffmpeg decode of a video into raw frames for the scene detector and, optionally, keyframe candidates.

ffmpeg runs with the same input restrictions as every other tool run (``probe.restricted``: local files,
allow-listed demuxers), decodes with its own threads, turns the picture upright as players do (a phone video's
display matrix), resamples to the stream's frame rate (frame *n* is at *n* / rate seconds) and splits the
picture in its filter graph into two raw streams on two pipes:

- ``analysis``: every frame, scaled to ~``ANALYSIS_WIDTH`` px on the larger side (PySceneDetect's
  auto-downscale) with ``fast_bilinear``, the swscale filter whose frame scores come closest to the OpenCV
  decode + ``INTER_LINEAR`` resize used before (within ~0.5% on real footage);
- ``candidates`` (when asked): every ``every``-th frame (frame 0, every, 2*every, ...) at the size keyframes
  are stored (at most ``max_width`` px wide, square pixels), from which the caller keeps the few it needs;
  scaled with ``area`` (a box filter: as sharp as bicubic when shrinking 2-4x, a third of its cost).

Both are planar YUV 4:2:0 (I420, as decoded: no colour conversion in ffmpeg, half the bytes of BGR); ``bgr``
converts a frame with OpenCV, which the caller does for every analysis frame and for the few kept candidates.
Sizes are even (4:2:0). The filters run in one thread (``-filter_complex_threads 1``): slice threads on frames
this small cost more than they give (~8% of the CPU on tears_of_steel), and each frame goes out in one write
(``-avioflags direct``). ffmpeg's instructions for this graph (callgrind) are ~1.1x those of decoding alone
(popeye 1440p HEVC: +5% analysis, +3% candidates), against 1.44x with BGR output, bicubic candidates and twice
as many of them.

``FrameSource`` reads both pipes in one thread, so frames stream through in constant memory: a frame is
read when the caller asks for it, and the other pipe is read only while waiting, so ffmpeg never blocks on a
full pipe and never runs more than a pipe's worth ahead. ``cancel`` (a ``threading.Event``) stops it within
``POLL_S``; ``stall_timeout_s`` bounds how long ffmpeg may go without producing anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from services.common.errors import DeadlineExceeded, FailedPrecondition
from services.media.probe import (
    PROBE_TIMEOUT_S,
    REASON_UNREADABLE_MEDIA,
    VideoStreamFacts,
    first_motion_video,
    media_error,
    restricted,
    trim_stderr,
    video_stream_facts,
)

ANALYSIS_WIDTH = 256
"""Frames are compared at about this size on their larger side (PySceneDetect's auto-downscale)."""
KEYFRAME_MAX_WIDTH = 480
"""Largest width of a stored keyframe or thumbnail (as ``decode.extract_frame`` makes them)."""
STALL_TIMEOUT_S = 120.0
"""Longest ffmpeg may go without producing a frame before the decode fails (DEADLINE_EXCEEDED)."""
POLL_S = 0.1
_PIPE_BYTES = 1 << 20  # fewer wake-ups per frame; Linux allows unprivileged pipes up to 1 MiB by default
_F_SETPIPE_SZ = 1031


class DecodeCancelled(Exception):
    """The decode stopped because its ``cancel`` event was set."""


@dataclass(frozen=True)
class VideoStream(VideoStreamFacts):
    """The stream to decode: absolute ``index``, size (upright), frame rate and sample aspect ratio, as
    ``probe`` finds them (``MediaInfo.video_stream``), and the sizes a decode derives from them."""

    @classmethod
    def of(cls, facts: VideoStreamFacts) -> VideoStream:
        return facts if isinstance(facts, VideoStream) else cls(facts.index, facts.width, facts.height, facts.rate,
                                                                facts.sar)

    @property
    def analysis_size(self) -> tuple[int, int]:
        """PySceneDetect's auto-downscale: the larger side to ~``ANALYSIS_WIDTH``, never upscaled; even."""
        factor = max(1.0, max(self.width, self.height) / ANALYSIS_WIDTH)
        return _even(self.width / factor), _even(self.height / factor)

    def keyframe_size(self, max_width: int = KEYFRAME_MAX_WIDTH) -> tuple[int, int]:
        """Display size (square pixels) capped at ``max_width`` wide, both even: ``extract_frame``'s
        ``scale='min(max_width,iw*sar)':-2``."""
        display_width = self.width * self.sar
        width = _even(float(min(Fraction(max_width), display_width)), down=True)
        return width, _even(float(width * self.height / display_width))


def _even(size: float, down: bool = False) -> int:
    """``size`` rounded to an even number of pixels (down with ``down``), at least 2."""
    return max(2, 2 * (int(size / 2) if down else round(size / 2)))


def bgr(i420: np.ndarray) -> np.ndarray:
    """A frame from ``FrameSource`` (I420, ``(height * 3 / 2, width)``) as a ``(height, width, 3)`` BGR image."""
    return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)


def probe_video_stream(path: str | os.PathLike[str], field: str, cancel: threading.Event) -> VideoStream:
    """ffprobe (restricted, like every tool run) for the first moving-picture stream: for a decode without
    ``probe``'s ``MediaInfo.video_stream`` at hand."""
    args = restricted(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", os.fspath(path)])
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise FailedPrecondition("ffprobe is not installed or not on PATH", reason="TOOL_NOT_FOUND") from exc
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    try:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                if cancel.is_set():
                    raise DecodeCancelled() from None
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded(f"ffprobe took longer than {PROBE_TIMEOUT_S:.0f}s",
                                           reason="TOOL_TIMEOUT") from None
    finally:
        stop(proc)
    if proc.returncode != 0:
        message = trim_stderr(stderr).replace(os.fspath(path), os.path.basename(path))
        raise media_error(REASON_UNREADABLE_MEDIA, f"video cannot be decoded ({message})", field)
    try:
        streams = json.loads(stdout).get("streams") or []
    except (json.JSONDecodeError, AttributeError):
        streams = []
    video = first_motion_video(streams)
    facts = video_stream_facts(video) if video else None
    if facts is None:
        raise media_error(REASON_UNREADABLE_MEDIA, "no decodable video stream", field)
    return VideoStream.of(facts)


def decode_args(
    path: str | os.PathLike[str], stream: VideoStream, candidates_fd: int | None = None, every: int = 1,
    max_width: int = KEYFRAME_MAX_WIDTH,
) -> list[str]:
    """ffmpeg arguments: analysis frames to stdout and, with ``candidates_fd``, every ``every``-th frame at
    keyframe size to that pipe."""
    width, height = stream.analysis_size
    graph = f"[0:{stream.index}]fps={stream.rate}:start_time=0"
    analysis = f"scale={width}:{height}:flags=fast_bilinear,format=yuv420p"
    # whole frames in one write each (no 32 KiB output buffer): fewer wake-ups of the reader
    outputs = ["-map", "[analysis]", "-fps_mode", "passthrough", "-f", "rawvideo", "-avioflags", "direct", "pipe:1"]
    if candidates_fd is None:
        graph += f",{analysis}[analysis]"
    else:
        key_width, key_height = stream.keyframe_size(max_width)
        graph += (f",split[a][k];[a]{analysis}[analysis];"
                  f"[k]select=not(mod(n\\,{every})),scale={key_width}:{key_height}:flags=area,setsar=1,format=yuv420p[candidates]")
        outputs += ["-map", "[candidates]", "-fps_mode", "passthrough", "-f", "rawvideo", "-avioflags", "direct",
                    f"pipe:{candidates_fd}"]
    return restricted([
        "ffmpeg", "-nostdin", "-v", "error", "-threads", "0", "-i", os.fspath(path),
        "-an", "-sn", "-dn", "-filter_complex_threads", "1", "-filter_complex", graph, *outputs,
    ])  # fmt: skip


class FrameSource:
    """A running ffmpeg decode (``decode_args``) and its frames, read on demand: ``analysis()`` and
    ``candidate()`` each return the next frame of their stream (I420: a ``(height * 3 / 2, width)`` array, see
    ``bgr``), or None at its end. Use as a context manager: leaving it kills ffmpeg."""

    def __init__(
        self, path: str | os.PathLike[str], stream: VideoStream, cancel: threading.Event, *,
        stall_timeout_s: float = STALL_TIMEOUT_S, field: str = "video", candidates_every: int | None = None,
        max_width: int = KEYFRAME_MAX_WIDTH,
    ) -> None:
        if cancel.is_set():
            raise DecodeCancelled()
        self._path = os.fspath(path)
        self._cancel = cancel
        self._stall_timeout_s = stall_timeout_s
        self._field = field
        self._errors = tempfile.TemporaryFile()
        shapes = [_i420_shape(*stream.analysis_size)]
        read_fd, write_fd = None, None
        if candidates_every is not None:
            key_width, key_height = stream.keyframe_size(max_width)
            shapes.append(_i420_shape(key_width, key_height))
            read_fd, write_fd = os.pipe()
        args = decode_args(path, stream, write_fd, candidates_every or 1, max_width)
        try:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=self._errors, pass_fds=() if write_fd is None else (write_fd,))
        except FileNotFoundError as exc:
            self._errors.close()
            if read_fd is not None:
                os.close(read_fd)
            raise FailedPrecondition("ffmpeg is not installed or not on PATH", reason="TOOL_NOT_FOUND") from exc
        finally:
            if write_fd is not None:
                os.close(write_fd)  # the child has its copy; ours would keep the pipe open past ffmpeg's end
        assert self._proc.stdout is not None
        fds = [self._proc.stdout.fileno()] + ([read_fd] if read_fd is not None else [])
        self._pipes = [_FramePipe(fd, shape) for fd, shape in zip(fds, shapes, strict=True)]
        self._candidates_fd = read_fd
        self._poller = select.poll()
        for pipe in self._pipes:
            self._poller.register(pipe.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.analysis_frames = 0

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def analysis(self) -> np.ndarray | None:
        frame = self._next(0)
        if frame is not None:
            self.analysis_frames += 1
        return frame

    def candidate(self) -> np.ndarray | None:
        return self._next(1)

    def finish(self) -> None:
        """After the last frame: raise ``InvalidArgument`` (UNREADABLE_MEDIA) if no frame decoded. A decode
        error after some frames is not an error: what decoded is used, as a player would show it."""
        try:
            self._proc.wait(timeout=self._stall_timeout_s)
        except subprocess.TimeoutExpired:
            pass  # closed its output but hangs: what it sent is all there is
        if self.analysis_frames == 0:
            self._errors.seek(0)
            stderr = trim_stderr(self._errors.read()).replace(self._path, os.path.basename(self._path))
            raise media_error(REASON_UNREADABLE_MEDIA, f"video cannot be decoded ({stderr or 'no frame'})",
                              self._field)

    def close(self) -> None:
        stop(self._proc)
        if self._candidates_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._candidates_fd)
            self._candidates_fd = None
        self._errors.close()

    def _next(self, wanted: int) -> np.ndarray | None:
        """The next frame of pipe ``wanted``. While it is not there, whatever the other pipe has is read into
        that pipe's queue, so ffmpeg never blocks writing it."""
        pipe = self._pipes[wanted]
        stalled_at = time.monotonic() + self._stall_timeout_s
        while not pipe.frames:
            if pipe.ended:
                return None
            if self._cancel.is_set():
                raise DecodeCancelled()
            ready = {fd for fd, _ in self._poller.poll(POLL_S * 1000)}
            if not ready:
                if time.monotonic() >= stalled_at:
                    raise DeadlineExceeded(f"ffmpeg produced nothing for {self._stall_timeout_s:.0f}s",
                                           reason="TOOL_TIMEOUT")
                continue
            # the wanted pipe first; another only when the wanted one has nothing (bounds what queues up)
            for other in [pipe] if pipe.fd in ready else [p for p in self._pipes if p.fd in ready]:
                if other.fill():
                    stalled_at = time.monotonic() + self._stall_timeout_s
                if other.ended:
                    with contextlib.suppress(KeyError):
                        self._poller.unregister(other.fd)
        if self._cancel.is_set():
            raise DecodeCancelled()
        return pipe.frames.pop(0)


def _i420_shape(width: int, height: int) -> tuple[int, int]:
    return height * 3 // 2, width


class _FramePipe:
    """A pipe of raw frames of one ``shape``: what has arrived so far, cut into frames."""

    def __init__(self, fd: int, shape: tuple[int, int]) -> None:
        self.fd = fd
        self.shape = shape
        self.size = shape[0] * shape[1]
        self.frames: list[np.ndarray] = []
        self.ended = False
        self._new_frame()
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)

    def _new_frame(self) -> None:
        """A new array to read into: the frame handed out keeps its own."""
        self._frame = np.empty(self.shape, dtype=np.uint8)
        self._view = self._frame.data.cast("B")
        self._got = 0

    def fill(self) -> bool:
        """Read what the pipe has (one read); True if anything came."""
        count = os.readv(self.fd, [self._view[self._got:]])
        if count == 0:
            self.ended = True  # a partial last frame is dropped
            return False
        self._got += count
        if self._got == self.size:
            self.frames.append(self._frame)
            self._new_frame()
        return True


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the tool if it still runs, reap it, close its pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
