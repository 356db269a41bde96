"""Scene detection as the pipeline runs it (``analyse_video``: one decode for scenes, keyframes, thumbnail) on
generated media with known cuts and flashes, on a long single shot whose colour changes late (several keyframes,
each showing its stretch), on real footage against shot counts taken by eye, and on a long 1080p file whose memory
must stay bounded. Real ffmpeg throughout."""

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

from services.media.scenes import DEFAULT_KEYFRAME_INTERVAL_S, SceneAnalysis, analyse_video
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
"""BGR of every keyframe of the plain-colour shots (red, blue)."""


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
    """Scenes tile the video; each has keyframes whose spans tile it, each frame inside its own span (to a frame),
    a block (4 s at most, a merged last one 6 s) long; every JPEG is its own readable file, at most 480 px wide."""
    scenes = analysis.scenes
    assert scenes and scenes[0].start_s == 0.0 and scenes[-1].end_s == pytest.approx(duration_s)
    assert [s.index for s in scenes] == list(range(len(scenes)))
    assert all(before.end_s == after.start_s for before, after in pairwise(scenes))
    assert len(analysis.keyframes) == len(scenes)
    for scene, frames in zip(scenes, analysis.keyframes, strict=True):
        assert frames and frames[0].start_s == scene.start_s and frames[-1].end_s == scene.end_s, (scene, frames)
        assert all(before.end_s == after.start_s for before, after in pairwise(frames)), (scene, frames)
        for frame in frames:
            assert frame.start_s - 1 / FPS <= frame.time_s < frame.end_s, (scene, frame)
            assert 0 < frame.end_s - frame.start_s <= 1.5 * DEFAULT_KEYFRAME_INTERVAL_S + 1e-6, (scene, frame)
        middle = analysis.middle(scene.index)
        assert middle in frames and middle.start_s <= (scene.start_s + scene.end_s) / 2 < middle.end_s
    paths = [frame.path for frames in analysis.keyframes for frame in frames]
    assert len(paths) == len(set(paths))
    for jpeg in [*paths, analysis.thumbnail]:
        image = cv2.imread(str(jpeg))
        assert image is not None and image.shape[1] <= 480, jpeg


def test_cuts_are_found_within_two_frames_and_flashes_are_not_cuts(flashes_video: Path, tmp_path: Path) -> None:
    analysis = _analyse(flashes_video, 36.0, tmp_path)
    found = [s.start_s for s in analysis.scenes[1:]]
    expected = cut_times(SHOTS)
    assert len(found) == len(expected), found
    for got, want in zip(found, expected, strict=True):
        assert abs(got - want) <= 2 / FPS + 1e-6, (found, expected)
    for scene, frames in zip(analysis.scenes, analysis.keyframes, strict=True):  # 4 s blocks; a last under 2 s joins
        full, tail = divmod(round(scene.duration_s * FPS), round(DEFAULT_KEYFRAME_INTERVAL_S * FPS))
        assert len(frames) == full + (tail >= DEFAULT_KEYFRAME_INTERVAL_S * FPS / 2), (scene, frames)
    for index, colour in KEYFRAME_COLOURS.items():  # each keyframe is of its own shot, not of a neighbour
        for frame in analysis.keyframes[index]:
            mean = cv2.imread(str(frame.path)).reshape(-1, 3).mean(axis=0)
            assert np.abs(mean - colour).max() < 24, (index, frame, mean)
    for scene, frames in zip(analysis.scenes, analysis.keyframes, strict=True):
        for frame in frames:
            assert cv2.imread(str(frame.path)).mean() < 230, (scene, frame, "a white flash was chosen as keyframe")
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
    assert cv2.imread(str(analysis.thumbnail)).shape[:2] == cv2.imread(str(analysis.middle(0).path)).shape[:2] == (
        320, 180)


GREEN, BLUE = (0, 192, 0), (192, 0, 0)
"""BGR of the fading shot's early and late colour."""


def test_a_long_shot_gets_a_keyframe_per_block_each_showing_its_stretch(tmp_path: Path) -> None:
    """40 s of one shot: green, crossfading to blue over 30-36 s (gradual: about 0.4 of OpenCV's 180 hue steps a
    frame, so no cut), blue to the end. One scene, ten 4 s blocks: the early frames are green, the last blue."""
    green = make_scene_video(tmp_path / "green.mp4", [SceneSpec(36.0, "color=c=0x00c000")], fps=FPS, audio=False)
    blue = make_scene_video(tmp_path / "blue.mp4", [SceneSpec(10.0, "color=c=0x0000c0")], fps=FPS, audio=False)
    fading = tmp_path / "fading.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(green), "-i", str(blue), "-filter_complex",
                    "[0:v][1:v]xfade=transition=fade:duration=6:offset=30,format=yuv420p", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", str(FPS), str(fading)], check=True)  # fmt: skip
    analysis = _analyse(fading, 40.0, tmp_path / "frames")
    assert len(analysis.scenes) == 1, analysis.scenes
    [frames] = analysis.keyframes
    assert len(frames) >= 8, frames
    assert [round(f.start_s, 6) for f in frames] == [4.0 * n for n in range(len(frames))]  # blocks from the start
    colours = [cv2.imread(str(f.path)).reshape(-1, 3).mean(axis=0) for f in frames]
    assert np.abs(colours[0] - GREEN).max() < 24, (frames[0], colours[0])
    assert np.abs(colours[-1] - BLUE).max() < 24, (frames[-1], colours[-1])
    assert all(np.abs(colour - GREEN).max() < 24 for colour, f in zip(colours, frames, strict=True) if f.end_s <= 30)
    assert analysis.middle(0).start_s <= 20.0 < analysis.middle(0).end_s


def test_popeye_scene_count_matches_the_visible_shots(tmp_path: Path) -> None:
    video = real_media("popeye/popeye_p1.mkv")
    analysis = _analyse(video, 60.0, tmp_path)
    assert abs(len(analysis.scenes) - POPEYE_P1_SHOTS) <= 0.2 * POPEYE_P1_SHOTS, analysis.scenes
    assert cv2.imread(str(analysis.middle(0).path)).shape[:2] == (358, 480)  # 1440x1074 scaled to 480 wide


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
    # the picker's bound, (block / 2 + lag) / every + 3: half a 4 s block (50 frames at 25 fps) and the detector's
    # lag (15 + 3 + 1 frames) over the candidate step (8), plus 3
    assert figures["held"] <= (50 + 19) // 8 + 3
    assert figures["python_mb"] + figures["ffmpeg_mb"] < PEAK_RSS_LIMIT_MB, figures
