"""Keyframes from one pass: the picker keeps a bounded number of frames and still gives each block of every scene
the frame nearest its middle, the blocks tiling the scene; the detector's frame score is ContentDetector's own."""

from __future__ import annotations

import math
import random
import uuid
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from services.media.cuts import CutDetector, hsv_distance
from services.media.keyframes import Keyframe, KeyframePicker
from services.media.layout import keyframe_key, source_key, thumbnail_key, video_prefix
from services.media.scenes import analyse_video

FRAME = np.zeros((2, 2, 3), dtype=np.uint8)
EVERY, LAG, BLOCK = 4, 20, 100
HELD_BOUND = (BLOCK // 2 + LAG) // EVERY + 3
"""20: the open block's candidates from the lower bound of its middle on (at most (BLOCK / 2 + LAG) / EVERY + 1),
one below that bound, and the thumbnail's."""


def _run(length: int, cuts: list[int], *, every: int = EVERY, lag: int = LAG, block: int = BLOCK,
         delays: list[int] | None = None, thumbnail_at: int = 24, scenes: list[tuple[float, float]] | None = None,
         ) -> tuple[KeyframePicker[int], list[list[Keyframe[int]]], list[int]]:
    """Feed ``length`` frames as the scene loop does; cut ``cuts[i]`` is reported ``delays[i]`` frames late. Returns
    the picker, the keyframes of each of ``scenes`` (default: the scenes ``cuts`` make) and the frames at which the
    thumbnail was known. The handle of a kept frame is its index; ``keep`` checks each frame is kept once."""
    delays = delays or [lag - 1] * len(cuts)
    reported: dict[int, list[int]] = {}
    for cut, delay in zip(cuts, delays, strict=True):
        reported.setdefault(cut + delay, []).append(cut)
    kept: list[int] = []

    def keep(index: int, frame: np.ndarray) -> int:
        assert index not in kept
        kept.append(index)
        return index

    thumbnail_seen: list[int] = []
    picker: KeyframePicker[int] = KeyframePicker(keep, every=every, lag=lag, block=block, thumbnail_at=thumbnail_at,
                                                 on_thumbnail=lambda handle: thumbnail_seen.append(handle))
    for now in range(length):
        if now % every == 0:
            picker.offer(now, FRAME)
        for cut in reported.get(now, []):
            picker.cut(cut)
        picker.advance(now)
    if scenes is None:
        scenes = list(pairwise([0, *cuts, length]))
    return picker, picker.finish(scenes), thumbnail_seen


def _assert_tiled(scene: tuple[float, float], frames: list[Keyframe[int]]) -> None:
    """``frames`` are in time order and their spans tile ``scene`` exactly."""
    start, end = scene
    assert frames, scene
    assert frames[0].start == start and frames[-1].end == end, (scene, frames)
    assert all(before.end == after.start for before, after in pairwise(frames)), (scene, frames)
    assert all(frame.start < frame.end for frame in frames), (scene, frames)
    assert [f.index for f in frames] == sorted(f.index for f in frames), frames


def _assert_blocks(scene: tuple[float, float], frames: list[Keyframe[int]], *, every: int = EVERY,
                   block: int = BLOCK) -> None:
    """The blocks of ``scene`` are laid from its start: every span is a full block but the last, which is at least
    half a block (unless it is the scene's only one) and at most one and a half; each frame lies in its span, within
    ``every / 2`` of its block's middle (a merged last block's frame is its first full block's)."""
    _assert_tiled(scene, frames)
    for n, frame in enumerate(frames):
        length = frame.end - frame.start
        assert frame.start <= frame.index < frame.end, (scene, frame)
        if n < len(frames) - 1:
            assert length == block, (scene, frames)
        else:
            assert length <= 1.5 * block and (length >= block / 2 or len(frames) == 1), (scene, frames)
        middle = (frame.start + min(frame.end, frame.start + block)) / 2
        assert abs(frame.index - middle) <= every / 2, (scene, frame)


def test_a_long_scene_holds_a_bounded_number_of_frames_and_gets_a_frame_per_block() -> None:
    picker, [frames], _ = _run(60_000, [])
    assert picker.peak_held <= HELD_BOUND
    assert len(frames) == 60_000 // BLOCK
    _assert_blocks((0, 60_000), frames)


def test_a_long_scene_with_a_short_tail_merges_it_and_a_long_tail_gets_its_own_frame() -> None:
    _, [frames], _ = _run(10_030, [])
    assert len(frames) == 100 and frames[-1].end - frames[-1].start == 130
    _, [frames], _ = _run(10_070, [])
    assert len(frames) == 101 and frames[-1].end - frames[-1].start == 70
    _assert_blocks((0, 10_070), frames)


def test_every_block_of_every_scene_gets_a_frame_near_its_middle() -> None:
    rng = random.Random(7)
    cuts, at = [], 0
    for _ in range(200):  # scenes from the shortest a detector reports (lag frames) to very long ones, some ending
        # a few frames past a full block (the cut is then often reported before that block is settled)
        at += rng.choice([LAG, LAG + 3, 40, 49, 50, 97, 100, 105, 112, 149, 150, 151, 249, 300, 2_000, 2_010, 9_000])
        cuts.append(at)
    length = at + 500
    picker, keyframes, _ = _run(length, cuts, delays=[rng.randrange(LAG) for _ in cuts])
    assert picker.peak_held <= HELD_BOUND
    for scene, frames in zip(pairwise([0, *cuts, length]), keyframes, strict=True):
        _assert_blocks(scene, frames)
        full, tail = divmod(scene[1] - scene[0], BLOCK)
        assert len(frames) == full + (tail >= BLOCK / 2 or full == 0), (scene, frames)


def test_a_late_cut_beyond_the_open_block_settles_the_full_block_first() -> None:
    """At frame 174 (lag 80) the block [0, 100) is not settled yet; the cut at 170 reported then must close it
    and give [100, 170) (70 frames: over half a block) its own frame."""
    picker: KeyframePicker[int] = KeyframePicker(lambda index, frame: index, every=4, lag=80, block=100)
    for now in range(600):
        if now % 4 == 0:
            picker.offer(now, FRAME)
        if now == 174:
            picker.cut(170)
        picker.advance(now)
    first, second = picker.finish([(0, 170), (170, 600)])
    assert [(f.start, f.end) for f in first] == [(0, 100), (100, 170)]
    assert abs(first[0].index - 50) <= 2 and first[1].index == 136
    _assert_blocks((170, 600), second)
    assert len(second) == 4


def test_a_late_cut_leaving_a_short_tail_merges_it_into_the_previous_block() -> None:
    _, [first, second], _ = _run(1_000, [125], delays=[3], lag=30)
    assert [(f.start, f.end) for f in first] == [(0, 125)] and abs(first[0].index - 50) <= 2
    _assert_blocks((125, 1_000), second)


def test_the_thumbnail_is_known_early_and_is_the_nearest_candidate() -> None:
    _, _, seen = _run(5_000, [1_000], thumbnail_at=25)
    assert seen == [24]


def test_a_final_scene_made_of_two_picker_scenes_gets_all_their_frames() -> None:
    """The picker saw a cut at 430 (its last block [400, 430) joins [300, 400)) that the final scenes dropped."""
    _, [frames], _ = _run(1_000, [430], scenes=[(0, 1_000)])
    _assert_tiled((0, 1_000), frames)
    assert [(f.start, f.end) for f in frames] == [
        (0, 100), (100, 200), (200, 300), (300, 430), (430, 530), (530, 630), (630, 730), (730, 830), (830, 930),
        (930, 1_000)]
    assert all(f.start <= f.index < f.end for f in frames)


def test_a_cut_the_final_scenes_drop_near_the_end_still_gets_the_merged_scene_frames() -> None:
    lag = 20
    picker: KeyframePicker[int] = KeyframePicker(lambda index, frame: index, every=4, lag=lag, block=100)
    for now in range(1_000):
        if now % 4 == 0:
            picker.offer(now, FRAME)
        if now == 990:
            picker.cut(985)  # reported, then dropped by scenes_from_cuts (too near the end)
        picker.advance(now)
    [frames] = picker.finish([(0, 1_000.4)])  # fractional, as seconds times the rate give it
    _assert_tiled((0, 1_000.4), frames)
    assert len(frames) == 11 and (frames[-1].index, frames[-1].start) == (992, 985)


def test_a_scene_with_no_candidate_inside_gets_the_nearest_one() -> None:
    """Candidates every 10 frames: [21, 29) has none; it gets 30, the nearest, which is also the frame of the
    next scene [29, 35): a final scene made of both shows it once, and a final scene the picker's frames all
    miss gets the nearest picked frame."""
    cuts = [21, 29, 35]
    _, keyframes, _ = _run(300, cuts, every=10, lag=5, delays=[4, 4, 4])
    assert [[(f.index, f.start, f.end) for f in frames] for frames in keyframes[:3]] == [
        [(10, 0, 21)], [(30, 21, 29)], [(30, 29, 35)]]
    _, keyframes, _ = _run(300, cuts, every=10, lag=5, delays=[4, 4, 4],
                           scenes=[(0, 21), (21, 35), (35, 300)])
    assert [(f.index, f.start, f.end) for f in keyframes[1]] == [(30, 21, 35)]
    _, keyframes, _ = _run(300, cuts, every=10, lag=5, delays=[4, 4, 4],
                           scenes=[(0, 10), (10, 11), (11, 300)])
    assert [(f.index, f.start, f.end) for f in keyframes[1]] == [(10, 10, 11)]
    _assert_tiled((11, 300), keyframes[2])


def test_nothing_offered_is_a_lookup_error() -> None:
    picker: KeyframePicker[int] = KeyframePicker(lambda index, frame: index, every=4, lag=10, block=100)
    with pytest.raises(LookupError):
        picker.finish([(0, 10)])


def test_a_block_must_be_a_frame_at_least_and_the_interval_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        KeyframePicker(lambda index, frame: index, every=4, lag=10, block=0)
    for interval in (0.49, 60.01, math.nan):  # refused before the file is even probed
        with pytest.raises(ValueError, match="keyframe_interval_s"):
            analyse_video(tmp_path / "absent.mp4", 10.0, tmp_path / "out", keyframe_interval_s=interval)


def test_the_score_is_content_detectors_own() -> None:
    import cv2
    from scenedetect import ContentDetector, FrameTimecode

    rng = np.random.default_rng(3)
    first, second = (rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(2))
    reference = ContentDetector()
    reference.process_frame(FrameTimecode(0, fps=Fraction(25)), first)
    reference.process_frame(FrameTimecode(1, fps=Fraction(25)), second)
    ours = hsv_distance(cv2.cvtColor(second, cv2.COLOR_BGR2HSV), cv2.cvtColor(first, cv2.COLOR_BGR2HSV))
    assert ours == pytest.approx(float(reference._frame_score), rel=1e-12)


def _flat(value: int) -> np.ndarray:
    return np.full((36, 64, 3), value, dtype=np.uint8)


def _cuts(frames: list[np.ndarray]) -> list[float]:
    detector = CutDetector(Fraction(25), min_scene_s=0.6)
    for frame in frames:
        detector.push(frame)
    return detector.finish()


def test_a_white_flash_is_no_cut_but_a_hard_cut_is() -> None:
    grey, blue, white = _flat(90), np.zeros((36, 64, 3), np.uint8), _flat(255)
    blue[:, :, 0] = 200
    for flash in (1, 2, 3):
        assert _cuts([grey] * 40 + [white] * flash + [grey] * 40) == [], flash
    assert _cuts([grey] * 40 + [blue] * 40) == [40 / 25]
    assert _cuts([grey] * 40 + [white] * 2 + [blue] * 40) == [40 / 25]  # a flash into a new shot cuts at it


def test_blob_keys() -> None:
    video = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert source_key(video, ".mp4") == f"videos/{video}/source.mp4"
    assert thumbnail_key(video) == f"videos/{video}/thumbnail.jpg"
    assert keyframe_key(video, 7, 2) == f"videos/{video}/scenes/0007-02.jpg"
    assert all(key.startswith(video_prefix(video))
               for key in (source_key(video, ".webm"), thumbnail_key(video), keyframe_key(video, 0, 0)))
    for scene, frame in ((-1, 0), (0, -1)):
        with pytest.raises(ValueError):
            keyframe_key(video, scene, frame)
