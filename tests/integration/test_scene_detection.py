"""Scene detection as the pipeline runs it (``analyse_video``: one decode for scenes, keyframes, thumbnail) on
generated media with known cuts and flashes, on real footage against shot counts taken by eye, and on a long
1080p file whose memory must stay bounded. Real ffmpeg throughout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.media.keyframes import DEFAULT_CAPACITY
from services.media.scenes import SceneAnalysis, analyse_video
from tests.media import SceneSpec, cut_times, make_scene_video, real_media

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg/ffprobe not installed"),
]

ROOT = Path(__file__).parents[2]
FPS = 25

# Visible shots, counted by eye on contact sheets (ffmpeg ``fps=4,scale=192:-2,drawtext=%{pts},tile=8x10``,
# then 8 fps sheets around every doubtful change; a continuous camera move or pan is one shot, a cut hidden
# behind a muzzle flash is a cut):
POPEYE_P1_SHOTS = 5
"""popeye_p1.mkv (60 s): cuts at ~12.3, 27.3, 40.0 and ~44.7 s (into the rock pan)."""
TEARS_OF_STEEL_SHOTS = 28
"""tears-of-steel-battle-clip-medium.webm (70.5 s): cuts at ~2.2, 5.0, 6.5, 9.2, 12.9, 29.8, 32.9, 36.3, 37.5,
38.4, 40.0, 41.1, 47.0, 48.5, 50.1, 51.4, 51.9, 53.5, 56.0, 57.5, 59.6, 60.2, 61.4, 63.5, 65.5, 67.5, 68.8 s
(12.9-29.8 is one camera move; 51.4-51.9 is a 0.5 s insert, under the 0.6 s minimum scene)."""

# Generated: five shots, hard cuts at 8, 15, 24 and 30 s, and white flashes of 1-3 frames inside shots.
SHOTS = (
    SceneSpec(8.0, "testsrc2"),
    SceneSpec(7.0, "color=c=red"),
    SceneSpec(9.0, "mandelbrot"),
    SceneSpec(6.0, "smptebars"),
    SceneSpec(6.0, "color=c=0x1040ff"),
)
FLASHES = ((3.0, 1), (5.0, 3), (10.0, 2), (12.2, 3), (18.0, 3), (26.0, 1), (33.0, 2))
"""(start in seconds, frames) of each full-frame white flash; none within a second of a cut."""
KEYFRAME_COLOURS = {1: (0, 0, 255), 4: (255, 64, 16)}
"""BGR of the keyframes of the plain-colour shots (red, blue)."""


@pytest.fixture(scope="module")
def flashes_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flashes")
    plain = make_scene_video(folder / "plain.mp4", SHOTS, fps=FPS, audio=False)
    boxes = ",".join(
        f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='between(n,{round(at * FPS)},{round(at * FPS) + n - 1})'"
        for at, n in FLASHES)
    out = folder / "flashes.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(plain), "-vf", boxes, "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", str(FPS), "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


def _analyse(path: Path, duration_s: float, out: Path) -> SceneAnalysis:
    started = time.perf_counter()
    analysis = analyse_video(path, duration_s, out)
    print(f"\n{path.name}: {len(analysis.scenes)} scenes in {time.perf_counter() - started:.1f}s")
    _assert_contiguous(analysis, duration_s)
    return analysis


def _assert_contiguous(analysis: SceneAnalysis, duration_s: float) -> None:
    scenes = analysis.scenes
    assert scenes and scenes[0].start_s == 0.0 and scenes[-1].end_s == pytest.approx(duration_s)
    assert [s.index for s in scenes] == list(range(len(scenes)))
    assert all(before.end_s == after.start_s for before, after in pairwise(scenes))
    assert len(analysis.keyframes) == len(scenes) == len(set(analysis.keyframes))
    for jpeg in [*analysis.keyframes, analysis.thumbnail]:
        image = cv2.imread(str(jpeg))
        assert image is not None and image.shape[1] <= 480, jpeg


def test_cuts_are_found_within_two_frames_and_flashes_are_not_cuts(flashes_video: Path, tmp_path: Path) -> None:
    analysis = _analyse(flashes_video, 36.0, tmp_path)
    found = [s.start_s for s in analysis.scenes[1:]]
    expected = cut_times(SHOTS)
    assert len(found) == len(expected), found
    for got, want in zip(found, expected, strict=True):
        assert abs(got - want) <= 2 / FPS + 1e-6, (found, expected)
    for index, colour in KEYFRAME_COLOURS.items():  # each keyframe is its own shot's middle, not a flash
        mean = cv2.imread(str(analysis.keyframes[index])).reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - colour).max() < 24, (index, mean)
    for scene, jpeg in zip(analysis.scenes, analysis.keyframes, strict=True):
        assert cv2.imread(str(jpeg)).mean() < 230, (scene, "a white flash was chosen as keyframe")
    thumbnail = cv2.imread(str(analysis.thumbnail))
    assert thumbnail.shape[:2] == (240, 320)


def test_keyframes_of_a_phone_video_are_upright(tmp_path: Path) -> None:
    """A 320x180 stream with a 90-degree display matrix (as phones record portrait) plays as 180x320."""
    landscape = make_scene_video(tmp_path / "landscape.mp4", [SceneSpec(2.0, "testsrc2")], size="320x180",
                                 fps=FPS, audio=False)
    turned = tmp_path / "portrait.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(landscape), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(turned)], check=True)
    analysis = _analyse(turned, 2.0, tmp_path / "frames")
    assert len(analysis.scenes) == 1
    assert cv2.imread(str(analysis.thumbnail)).shape[:2] == cv2.imread(str(analysis.keyframes[0])).shape[:2] == (
        320, 180)


def test_popeye_scene_count_matches_the_visible_shots(tmp_path: Path) -> None:
    video = real_media("popeye/popeye_p1.mkv")
    analysis = _analyse(video, 60.0, tmp_path)
    assert abs(len(analysis.scenes) - POPEYE_P1_SHOTS) <= 0.2 * POPEYE_P1_SHOTS, analysis.scenes
    assert cv2.imread(str(analysis.keyframes[0])).shape[:2] == (358, 480)  # 1440x1074 scaled to 480 wide


def test_tears_of_steel_scene_count_matches_the_visible_shots(tmp_path: Path) -> None:
    video = real_media("tears_of_steel/tears-of-steel-battle-clip-medium.webm")
    analysis = _analyse(video, 70.542, tmp_path)
    assert abs(len(analysis.scenes) - TEARS_OF_STEEL_SHOTS) <= 0.2 * TEARS_OF_STEEL_SHOTS, analysis.scenes
    assert min(s.duration_s for s in analysis.scenes) >= 0.6


LONG_S = 600
PEAK_RSS_LIMIT_MB = 500
_MEASURE = """
import json, resource, sys, tempfile
from services.media.scenes import analyse_video
with tempfile.TemporaryDirectory() as out:
    analysis = analyse_video(sys.argv[1], float(sys.argv[2]), out)
# This process's own peak from its memory map (VmHWM): getrusage's ru_maxrss survives fork and exec, so it would
# report the parent's (pytest's, with torch loaded: ~1 GB) instead. ffmpeg's: the largest child's ru_maxrss.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
print(json.dumps({"scenes": len(analysis.scenes), "frames": analysis.frames, "held": analysis.peak_frames_held,
                  "python_mb": hwm, "ffmpeg_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def test_memory_of_a_ten_minute_1080p_video_stays_bounded(tmp_path: Path) -> None:
    """The whole stage (Python and ffmpeg, each at its peak) in a fresh process, on 10 min of 1080p25: a 10 s
    testsrc2 clip at a low bitrate looped by stream copy (made in seconds; its loop point is no cut, so this is
    one 10-minute scene for the keyframe picker)."""
    clip, long = tmp_path / "clip.mp4", tmp_path / "long.mp4"
    run = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    subprocess.run([*run, "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25:duration=10", "-c:v", "libx264",
                    "-preset", "ultrafast", "-b:v", "400k", "-g", "250", str(clip)], check=True)  # fmt: skip
    subprocess.run([*run, "-stream_loop", str(LONG_S // 10 - 1), "-i", str(clip), "-c", "copy", str(long)],
                   check=True)  # fmt: skip
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(long), str(LONG_S)], cwd=ROOT,
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\n{LONG_S} s of 1080p: {figures}")
    assert figures["frames"] == LONG_S * 25
    # the picker's bound: its capacity + the detector's lag (15 + 3 + 1 frames at 25 fps) / candidate step (8) + 2
    assert figures["held"] <= DEFAULT_CAPACITY + 19 // 8 + 2
    assert figures["python_mb"] + figures["ffmpeg_mb"] < PEAK_RSS_LIMIT_MB, figures
