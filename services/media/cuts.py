"""Cuts, frame by frame: PySceneDetect's ``ContentDetector`` behind a flash gate.

``ContentDetector`` compares consecutive frames in HSV and cuts where the change passes ``threshold``; its flash
filter (MERGE mode) folds cuts closer than ``min_scene_s`` into one, so bursts of muzzle flashes and explosions do
not explode the scene count while real hard cuts keep frame accuracy. (``AdaptiveDetector`` was tried on
tears_of_steel: it missed about a third of the visible hard cuts.) In front of it a flash gate takes out short
flashes: a frame that jumps away from the last frame the detector saw is held back for up to ``FLASH_S`` (at
least 3 frames); if a later frame in that window is back near that last one, the frames between (a white frame,
a photo or muzzle flash) never reach the detector, so a flash inside a shot is no cut. The frame scores are
ContentDetector's own (``hsv_distance``: the mean absolute HSV difference with its default weights), computed
once per frame with OpenCV.
"""

from __future__ import annotations

import math
from collections import deque
from fractions import Fraction

import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode

DEFAULT_THRESHOLD = 27.0
DEFAULT_MIN_SCENE_S = 0.6
FLASH_S = 0.1
"""Longest flash the gate takes out (at least 3 frames whatever the rate)."""


def hsv_distance(a: np.ndarray, b: np.ndarray) -> float:
    """ContentDetector's frame score with its default weights: the mean absolute difference of hue,
    saturation and value between two HSV images, averaged over the three (one OpenCV pass over the image
    where ContentDetector makes three numpy passes; the same number)."""
    hue, sat, val, _ = cv2.mean(cv2.absdiff(a, b))
    return (hue + sat + val) / 3.0


class _ScoredContentDetector(ContentDetector):
    """PySceneDetect's ContentDetector (threshold, minimum scene length, MERGE flash filter) deciding on the
    frame score ``CutDetector`` computed (``score``) instead of computing it again."""

    score = 0.0

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray) -> float:
        return self.score


class CutDetector:
    """Frame by frame: BGR analysis frames in (``push``), frame numbers of cuts out, as they are known.

    A cut is reported at most ``lag`` frames after the frame it cuts at (the flash gate's look-ahead plus the
    flash filter's ``min_scene_frames``)."""

    def __init__(self, rate: Fraction, threshold: float = DEFAULT_THRESHOLD,
                 min_scene_s: float = DEFAULT_MIN_SCENE_S) -> None:
        self.rate = rate
        self.threshold = threshold
        self.min_scene_frames = max(1, round(min_scene_s * float(rate)))
        self.flash_frames = max(3, math.ceil(FLASH_S * float(rate)))
        self.lag = self.min_scene_frames + self.flash_frames + 1
        self._detector = _ScoredContentDetector(threshold=threshold, min_scene_len=self.min_scene_frames)
        self._pending: deque[tuple[int, np.ndarray]] = deque()  # frames held back by the flash gate
        self._last: np.ndarray | None = None  # HSV of the last frame the detector saw
        self._frames = 0
        self._cuts: list[int] = []

    def push(self, frame: np.ndarray) -> list[int]:
        """The next frame (BGR); the cuts this lets the detector report, ascending (frames numbered from 0)."""
        self._pending.append((self._frames, cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)))
        self._frames += 1
        return self._drain(final=False)

    def finish(self) -> list[float]:
        """After the last frame: every cut, in seconds (the first frame of each new shot)."""
        if self._frames:
            self._drain(final=True)
            end = FrameTimecode(self._frames - 1, fps=self.rate)
            self._cuts += [cut.frame_num for cut in self._detector.post_process(end)]
        return [float(cut / self.rate) for cut in sorted(set(self._cuts)) if cut > 0]

    def _drain(self, final: bool) -> list[int]:
        found: list[int] = []
        while self._pending:
            index, hsv = self._pending[0]
            score = 0.0 if self._last is None else hsv_distance(hsv, self._last)
            if score >= self.threshold:
                assert self._last is not None
                back = next((n for n in range(1, len(self._pending))
                             if hsv_distance(self._pending[n][1], self._last) < self.threshold), None)
                if back is not None:  # a flash: the picture came back; its frames are not shown to the detector
                    for _ in range(back):
                        self._pending.popleft()
                    continue
                if len(self._pending) <= self.flash_frames and not final:
                    break  # a jump; whether it comes back is not known yet
            self._pending.popleft()
            self._detector.score = score
            found += [cut.frame_num for cut in self._detector.process_frame(FrameTimecode(index, fps=self.rate), hsv)]
            self._last = hsv
        self._cuts += found
        return sorted(c for c in found if c > 0)
