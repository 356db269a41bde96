"""Which decoded frames become each scene's keyframes (one per few seconds of the scene, each standing for its
stretch of it) and the poster thumbnail, chosen during the one decode pass while holding a bounded number of
frames, however long a scene runs.

One frame cannot show a 40 s scene, so a scene is split into blocks of ``block`` frames laid from its start:
``[start, start + block)``, ``[start + block, start + 2 * block)``, ... The last block ends at the scene's end;
when it is shorter than ``block / 2`` and the scene has an earlier block, it joins that one (which then stands
for up to ``1.5 * block`` frames): no frame stands for a sliver. Each block's frame is the candidate nearest the
block's middle, inside the block; a scene with no candidate inside it at all gets the nearest candidate anywhere
(a block without a candidate of its own, possible only when ``block`` is under ``every`` or the decode ended
early, joins the block before it in its scene, or else the one after).

The detector reports a cut up to ``lag`` frames after the frame it cuts at, so a block is settled (no cut can
fall inside it any more) once the decode is ``lag`` frames past its end, or when a cut ends it. ``KeyframePicker``
is offered candidate frames (every ``every``-th frame of the decode, at keyframe size), told of each cut as it
is reported, and told how far the decode has got (``advance``). A settled block's frame is handed to ``keep``
(which writes it out) at once, so only the open block's candidates are held, and of those only the ones that can
still be nearest its middle: the block ends at ``now - lag`` or later (or at its full length), so its middle is
at least ``(block start + min(now - lag, block end)) / 2``, and every candidate before the last one at or below
that bound is dropped. Hence at most ``(block / 2 + lag) / every + 3`` frames are held (the open block's
candidates from that bound to ``now``, one below it, and the thumbnail's), and each frame is within
``every / 2`` frames of its block's middle.

A cut reported late may lie beyond the end of the block being filled (up to ``lag`` frames on): ``cut`` first
settles every full block before it, then the partial one. ``finish`` maps the frames onto the final scenes,
which may have dropped cuts the picker saw (a scene of the final list can be several of the picker's).

Pure: no I/O of its own; ``keep`` decides what a kept frame becomes (a JPEG file, in ``scenes``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

H = TypeVar("H")


@dataclass(eq=False)
class _Held(Generic[H]):
    """A frame the picker still holds (``handle`` None) or has handed to ``keep`` (``frame`` None)."""

    index: int
    frame: np.ndarray | None
    handle: H | None = None


@dataclass(eq=False)
class _Pick(Generic[H]):
    """A block's frame and the frames ``[start, end)`` it stands for (its block, grown by any block it absorbed)."""

    held: _Held[H]
    start: float
    end: float


@dataclass(frozen=True)
class Keyframe(Generic[H]):
    """One keyframe of a final scene: frame ``index`` of the decode, ``keep``'s ``handle`` for it, and the part
    ``[start, end)`` (in frames) of the scene it stands for."""

    index: int
    handle: H
    start: float
    end: float


class KeyframePicker(Generic[H]):
    """Candidate frames in, one kept frame per block of each scene (and a thumbnail) out; see the module docstring.

    Call ``offer`` for each candidate (indices ascending, multiples of ``every``), ``cut`` for each scene
    boundary the detector reports (ascending, never before ``now + 1 - lag`` of the last ``advance``), ``advance``
    after each decoded frame, and ``finish`` at the end with the final scenes. ``on_thumbnail`` gets the
    thumbnail's handle as soon as no nearer candidate to ``thumbnail_at`` can come."""

    def __init__(
        self, keep: Callable[[int, np.ndarray], H], *, every: int, lag: int, block: int,
        thumbnail_at: int = 0, on_thumbnail: Callable[[H], None] | None = None,
    ) -> None:
        if every < 1 or lag < 0 or block < 1:
            raise ValueError(f"every and block must be >= 1 and lag >= 0, got {every}, {block}, {lag}")
        self._keep = keep
        self._every = every
        self._lag = lag
        self._size = block
        self._start: float = 0  # the open scene's first frame
        self._block: float = 0  # the open block's first frame
        self._span: float = 0  # where the open scene's next pick's span starts (earlier blocks with no frame join it)
        self._scene_picks = 0  # len(self._picks) when the open scene started
        self._open: list[_Held[H]] = []  # candidates that can still be a block's frame, ascending
        self._picks: list[_Pick[H]] = []  # one per settled block that got a frame, in time order, kept
        self._thumbnail_at = thumbnail_at
        self._on_thumbnail = on_thumbnail
        self._thumbnail_best: _Held[H] | None = None
        self.thumbnail: H | None = None
        self.peak_held = 0
        """Most frames held at once (for tests and benchmarks)."""

    def offer(self, index: int, frame: np.ndarray) -> None:
        """A candidate frame: frame ``index`` of the decode."""
        self._open.append(_Held(index, frame))
        best = self._thumbnail_best
        if self.thumbnail is None and (
            best is None or abs(index - self._thumbnail_at) < abs(best.index - self._thumbnail_at)
        ):
            self._thumbnail_best = _Held(index, frame)  # its own entry: the thumbnail gets its own handle
        held = sum(1 for h in self._open if h.frame is not None) + (self._thumbnail_best is not None)
        self.peak_held = max(self.peak_held, held)

    def cut(self, index: int) -> None:
        """A scene boundary at frame ``index``: the open scene ``[start, index)`` closes, a new one starts."""
        if index > self._start:
            self._close_scene(index)

    def advance(self, now: int) -> None:
        """The decode has reached frame ``now``: every cut still to come is at ``now + 1 - lag`` or later."""
        best = self._thumbnail_best
        if self.thumbnail is None and best is not None and now >= self._thumbnail_at + self._every:
            self._settle_thumbnail()
        settled = now + 1 - self._lag
        while self._block + self._size <= settled:  # a full block no cut can shorten any more
            self._settle_block(self._block + self._size)
        # The open block ends at `settled` or later, or at its full length: its middle cannot come before this.
        bound = (self._block + min(max(settled, self._block), self._block + self._size)) / 2
        below = [n for n, h in enumerate(self._open) if h.index <= bound]
        if below:
            del self._open[:below[-1]]

    def finish(self, scenes: Sequence[tuple[float, float]]) -> list[list[Keyframe[H]]]:
        """The keyframes of each of ``scenes`` (contiguous, ascending ``[start, end)`` in frames, fractional
        allowed), in time order, their spans tiling the scene exactly: the open scene is closed at the last
        scene's end, and each picked frame goes to the scene that holds the middle of its span (a scene that
        none falls to gets the picked frame nearest its middle, so two scenes may share a handle). Also settles
        the thumbnail. Raises ``LookupError`` if no frame was ever offered."""
        if self.thumbnail is None:
            self._settle_thumbnail()
        if not scenes:
            return []
        end = scenes[-1][1]
        if end > self._start:
            self._close_scene(end)
        if not self._picks:
            raise LookupError("no frame was offered")
        starts = [start for start, _ in scenes]
        mine: list[list[_Pick[H]]] = [[] for _ in scenes]
        for pick in self._picks:
            middle = (pick.start + pick.end) / 2
            n = bisect_right(starts, middle) - 1
            if n >= 0 and middle < scenes[n][1]:
                mine[n].append(pick)
        out: list[list[Keyframe[H]]] = []
        for (start, end), picks in zip(scenes, mine, strict=True):
            if not picks:
                middle = (start + end) / 2
                picks = [min(self._picks, key=lambda p: abs(p.held.index - middle))]
            merged: list[_Pick[H]] = []
            for pick in picks:  # one frame twice in a row (a fallback shared by two picker scenes) shows once
                if merged and merged[-1].held is pick.held:
                    merged[-1] = _Pick(pick.held, merged[-1].start, pick.end)
                else:
                    merged.append(pick)
            bounds = [start, *(p.start for p in merged[1:]), end]
            out.append([Keyframe(p.held.index, self._handle(p.held), bounds[n], bounds[n + 1])
                        for n, p in enumerate(merged)])
        return out

    def _close_scene(self, end: float) -> None:
        """The open scene ends at ``end``: settle its full blocks up to there, then its last, partial one."""
        while self._block + self._size <= end:
            self._settle_block(self._block + self._size)
        scene_picked = len(self._picks) > self._scene_picks
        if self._block < end:
            if end - self._block < self._size / 2 and self._block > self._start and scene_picked:
                self._picks[-1].end = end  # too short for a frame of its own: joins the previous block
            else:
                self._settle_block(end)
        if len(self._picks) == self._scene_picks:  # no candidate inside the scene: the nearest one anywhere
            pool = [*self._open, *(p.held for p in self._picks[-1:])]
            middle = (self._start + end) / 2
            if pool:
                chosen = min(pool, key=lambda h: abs(h.index - middle))
                self._picks.append(_Pick(self._kept(chosen), self._start, end))
        self._open = [h for h in self._open if h.index >= end]
        self._start = self._block = self._span = end
        self._scene_picks = len(self._picks)

    def _settle_block(self, end: float) -> None:
        """The open block ``[block, end)`` is settled: its candidate nearest its middle is kept as its frame. A
        block with no candidate inside joins the previous block of its scene, or else the next one."""
        start = self._block
        middle = (start + end) / 2
        inside = [h for h in self._open if start <= h.index < end]
        if inside:
            chosen = min(inside, key=lambda h: abs(h.index - middle))
            self._picks.append(_Pick(self._kept(chosen), self._span, end))
            self._span = end
        elif len(self._picks) > self._scene_picks:
            self._picks[-1].end = end
            self._span = end
        self._block = end

    def _settle_thumbnail(self) -> None:
        best = self._thumbnail_best
        if best is None:
            raise LookupError("no frame was offered")
        self.thumbnail = self._handle(best)
        self._thumbnail_best = None
        if self._on_thumbnail is not None:
            self._on_thumbnail(self.thumbnail)

    def _kept(self, held: _Held[H]) -> _Held[H]:
        """``held``, handed to ``keep`` unless it already was (and then its frame released)."""
        if held.frame is not None:
            held.handle = self._keep(held.index, held.frame)
            held.frame = None
        return held

    def _handle(self, held: _Held[H]) -> H:
        handle = self._kept(held).handle
        assert handle is not None
        return handle
