"""Keyframes from one pass: the picker keeps a bounded number of frames and still finds each scene's middle;
the detector's frame score is ContentDetector's own."""

from __future__ import annotations

import random
import uuid
from fractions import Fraction
from itertools import pairwise

import numpy as np
import pytest

from services.media.cuts import CutDetector, hsv_distance
from services.media.keyframes import KeyframePicker
from services.media.layout import keyframe_key, source_key, thumbnail_key, video_prefix

FRAME = np.zeros((2, 2, 3), dtype=np.uint8)


def _run(length: int, cuts: list[int], *, every: int = 4, lag: int = 20, capacity: int = 16,
         delays: list[int] | None = None, thumbnail_at: int = 24) -> tuple[KeyframePicker[int], list[int], list[int]]:
    """Feed ``length`` frames as the scene loop does; cut ``cuts[i]`` is reported ``delays[i]`` frames late.
    Returns the picker, the keyframe index of each scene and the frames at which the thumbnail was known."""
    delays = delays or [lag - 1] * len(cuts)
    reported = {}
    for cut, delay in zip(cuts, delays, strict=True):
        reported.setdefault(cut + delay, []).append(cut)
    thumbnail_seen: list[int] = []
    picker: KeyframePicker[int] = KeyframePicker(lambda index, frame: index, every=every, lag=lag,
                                                 capacity=capacity, thumbnail_at=thumbnail_at,
                                                 on_thumbnail=lambda handle: thumbnail_seen.append(handle))
    for now in range(length):
        if now % every == 0:
            picker.offer(now, FRAME)
        for cut in reported.get(now, []):
            picker.cut(cut)
        picker.advance(now)
    bounds = [0, *cuts, length]
    return picker, picker.finish(list(pairwise(bounds))), thumbnail_seen


def test_a_long_scene_holds_a_bounded_number_of_frames() -> None:
    picker, [keyframe], _ = _run(60_000, [])
    assert picker.peak_held <= 16 + 20 // 4 + 2
    assert abs(keyframe - 30_000) <= 60_000 / 16  # within the grid step the scene's length needs


def test_each_scene_gets_a_frame_inside_it_near_its_middle() -> None:
    rng = random.Random(7)
    lag, every = 20, 4
    cuts, at = [], 0
    for _ in range(100):  # scenes from the shortest a detector reports (lag frames) to very long ones
        at += rng.choice([lag, lag + 3, 40, 97, 300, 2_000, 9_000])
        cuts.append(at)
    length = at + 500
    picker, keyframes, _ = _run(length, cuts, every=every, lag=lag, delays=[rng.randrange(lag) for _ in cuts])
    assert picker.peak_held <= 16 + lag // every + 2
    bounds = [0, *cuts, length]
    for (start, end), keyframe in zip(pairwise(bounds), keyframes, strict=True):
        assert start <= keyframe < end
        assert abs(keyframe - (start + end) / 2) <= max(every / 2 + 1, (end - start) / 16), (start, end, keyframe)


def test_the_thumbnail_is_known_early_and_is_the_nearest_candidate() -> None:
    _, _, seen = _run(5_000, [1_000], thumbnail_at=25)
    assert seen == [24]


def test_a_cut_the_final_scenes_drop_still_gets_the_merged_scene_a_frame() -> None:
    lag = 20
    picker: KeyframePicker[int] = KeyframePicker(lambda index, frame: index, every=4, lag=lag)
    for now in range(1_000):
        if now % 4 == 0:
            picker.offer(now, FRAME)
        if now == 990:
            picker.cut(985)  # reported, then dropped by scenes_from_cuts (too near the end)
        picker.advance(now)
    [keyframe] = picker.finish([(0, 1_000)])
    assert abs(keyframe - 500) <= 1_000 / 16


def test_nothing_offered_is_a_lookup_error() -> None:
    picker: KeyframePicker[int] = KeyframePicker(lambda index, frame: index, every=4, lag=10)
    with pytest.raises(LookupError):
        picker.finish([(0, 10)])


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
    assert keyframe_key(video, 7) == f"videos/{video}/scenes/0007.jpg"
    assert all(key.startswith(video_prefix(video))
               for key in (source_key(video, ".webm"), thumbnail_key(video), keyframe_key(video, 0)))
    with pytest.raises(ValueError):
        keyframe_key(video, -1)
