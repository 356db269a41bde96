"""Scene detection (and the pipeline's one media pass) stops when asked: a cancelled job gives its CPU back
within 2 s, with no ffmpeg left.

The video is 10 minutes of testsrc2 (a 10 s clip looped by stream copy, so it takes a second to make);
decoding all of it would take far longer than the test waits.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from fractions import Fraction
from pathlib import Path

import psutil
import pytest

from services.common.errors import DeadlineExceeded
from services.media.frames import FrameSource, VideoStream
from services.media.scenes import (
    MediaPass,
    SceneDetectionCancelled,
    detect_scenes,
    detect_scenes_async,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg/ffprobe not installed"),
]

LONG_S = 600.0


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cancel")
    clip, long = folder / "clip.mp4", folder / "long.mp4"
    run = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    subprocess.run([*run, "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=10",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", str(clip)], check=True)  # fmt: skip
    subprocess.run([*run, "-stream_loop", str(int(LONG_S / 10) - 1), "-i", str(clip), "-c", "copy",
                    str(long)], check=True)  # fmt: skip
    return long


def _live_ffmpeg_children() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "ffmpeg" and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


async def _decoding_for(seconds: float) -> None:
    """Wait until ffmpeg runs (after the probe; slow on a busy machine), then ``seconds`` more."""
    deadline = time.monotonic() + 20
    while not _live_ffmpeg_children():
        assert time.monotonic() < deadline, "ffmpeg never started decoding"
        await asyncio.sleep(0.05)
    await asyncio.sleep(seconds)


def _cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


async def test_cancelled_detection_stops_ffmpeg_and_the_thread(long_video: Path) -> None:
    threads_before = threading.active_count()
    task = asyncio.create_task(detect_scenes_async(long_video, LONG_S))
    try:
        await _decoding_for(1.0)
        assert not task.done()
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - cancelled_at < 2.0
    finally:
        task.cancel()

    assert _live_ffmpeg_children() == []
    await asyncio.sleep(0.2)  # let the last reads of the pipe settle
    before = _cpu_s()
    await asyncio.sleep(1.0)
    used = _cpu_s() - before
    assert used < 0.2, f"{used:.2f}s of CPU in the second after the cancel: the decode still runs"
    assert threading.active_count() <= max(threads_before, 1) + 1  # at most an idle pool worker is new


async def test_cancel_event_stops_the_blocking_call(long_video: Path) -> None:
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, lambda: detect_scenes(long_video, LONG_S, cancel=cancel))
    try:
        await _decoding_for(0.5)
        started = time.monotonic()
        cancel.set()
        with pytest.raises(SceneDetectionCancelled):
            await work
    finally:
        cancel.set()
    assert time.monotonic() - started < 2.0
    assert _live_ffmpeg_children() == []


async def test_cancelled_media_pass_stops_ffmpeg_and_the_thread(long_video: Path, tmp_path: Path) -> None:
    """The pipeline's one pass (thumbnail, scenes, keyframes) stops like detect_scenes_async when its task is
    cancelled after the thumbnail came, mid-decode."""
    thumbnails: list[Path] = []

    async def process() -> None:
        async with MediaPass(long_video, LONG_S, tmp_path, thumbnail_at_s=1.0) as media:
            thumbnails.append(await media.thumbnail())
            await media.result()

    task = asyncio.create_task(process())
    try:
        deadline = time.monotonic() + 30
        while not thumbnails:
            assert time.monotonic() < deadline and not task.done(), "no thumbnail while decoding"
            await asyncio.sleep(0.05)
        assert thumbnails[0].stat().st_size > 0 and _live_ffmpeg_children()
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - cancelled_at < 2.0
    finally:
        task.cancel()
    assert _live_ffmpeg_children() == []


def test_a_stalled_decoder_times_out(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.mp4"  # an input that never delivers a byte, like a hung network mount
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # holds the FIFO open: ffmpeg's reads wait, no EOF
    try:
        stream = VideoStream(index=0, width=64, height=64, rate=Fraction(25))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as err, \
                FrameSource(fifo, stream, threading.Event(), stall_timeout_s=0.5) as frames:
            frames.analysis()
        assert 0.4 < time.monotonic() - started < 2.0
        assert err.value.reason == "TOOL_TIMEOUT"
    finally:
        os.close(writer)
    assert _live_ffmpeg_children() == []
