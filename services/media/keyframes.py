"""Which decoded frame becomes each scene's keyframe (the frame nearest its middle) and the poster thumbnail,
chosen during the one decode pass while holding a bounded number of frames, however long a scene runs.

A scene's middle is known only once the scene has ended, and the detector reports a cut up to ``lag`` frames
after the frame it cuts at. ``KeyframePicker`` is offered candidate frames (every ``every``-th frame of the
decode, at keyframe size), told of each cut as it is reported, and told how far the decode has got
(``advance``). For the open scene ``[start, now]`` it keeps only the candidates that can still be nearest to
its middle:

- the scene ends at ``now - lag`` or later, so its middle is at least ``(start + now - lag) / 2`` and only
  moves on as the scene grows: every candidate before the last one at or below that bound is dropped;
- of the candidates older than ``now - lag`` (no cut can fall among them any more) it keeps those on a grid
  whose step doubles whenever more than ``capacity`` would remain; the last ``lag`` frames keep every
  candidate, since a cut may still fall among them and start a short scene there.

So at most ``capacity + lag / every + 2`` frames are held, and a scene's keyframe is within a grid step of
its middle: within ``every / 2`` frames for scenes up to ``~capacity * every`` frames long, within about
``1 / (2 * capacity)`` of the scene's length beyond that. A closed scene's frame is handed to ``keep``
(which writes it out) as soon as the scene closes, so nothing per scene stays in memory but ``keep``'s answer.

Pure: no I/O of its own; ``keep`` decides what a kept frame becomes (a JPEG file, in ``scenes``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

H = TypeVar("H")

DEFAULT_CAPACITY = 16


@dataclass(eq=False)
class _Held(Generic[H]):
    """A frame the picker still holds (``handle`` None) or has handed to ``keep`` (``frame`` None)."""

    index: int
    frame: np.ndarray | None
    handle: H | None = None


class KeyframePicker(Generic[H]):
    """Candidate frames in, one kept frame per scene (and a thumbnail) out; see the module docstring.

    Call ``offer`` for each candidate (indices ascending, multiples of ``every``), ``cut`` for each scene
    boundary the detector reports (ascending), ``advance`` after each decoded frame, and ``finish`` at the end
    with the final scenes. ``on_thumbnail`` gets the thumbnail's handle as soon as no nearer candidate to
    ``thumbnail_at`` can come."""

    def __init__(
        self, keep: Callable[[int, np.ndarray], H], *, every: int, lag: int, capacity: int = DEFAULT_CAPACITY,
        thumbnail_at: int = 0, on_thumbnail: Callable[[H], None] | None = None,
    ) -> None:
        if every < 1 or lag < 0:
            raise ValueError(f"every must be >= 1 and lag >= 0, got {every}, {lag}")
        self._keep = keep
        self._every = every
        self._lag = lag
        self._capacity = max(2, capacity)
        self._grid = every
        self._start = 0
        self._open: list[_Held[H]] = []  # candidates of the open scene (and of a scene a pending cut starts)
        self._picks: list[_Held[H]] = []  # one per closed scene, already kept
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
        if index <= self._start:
            return
        middle = (self._start + index) / 2
        inside = [h for h in self._open if self._start <= h.index < index]
        chosen = min(inside or self._open, key=lambda h: abs(h.index - middle), default=None)
        if chosen is not None:
            self._picks.append(self._kept(chosen))
        self._open = [h for h in self._open if h.index >= index]
        self._start = index
        self._grid = self._every

    def advance(self, now: int) -> None:
        """The decode has reached frame ``now``: every cut still to come is at ``now + 1 - lag`` or later."""
        best = self._thumbnail_best
        if self.thumbnail is None and best is not None and now >= self._thumbnail_at + self._every:
            self._settle_thumbnail()
        settled = now + 1 - self._lag
        if settled <= self._start:
            return
        self._thin(settled)
        bound = (self._start + settled) / 2  # the open scene's middle cannot come before this
        below = [n for n, h in enumerate(self._open) if h.index <= bound]
        if below:
            del self._open[:below[-1]]

    def finish(self, scenes: Sequence[tuple[float, float]]) -> list[H]:
        """Handles of the keyframes of ``scenes`` (``[start, end)`` in frames, fractional allowed): for each,
        the held or kept frame nearest its middle, inside it if there is one (two scenes may get the same
        handle when a scene has no frame of its own). Also settles the thumbnail. Raises ``LookupError`` if no
        frame was ever offered."""
        if self.thumbnail is None:
            self._settle_thumbnail()
        pool = self._picks + self._open
        handles: list[H] = []
        for start, end in scenes:
            middle = (start + end) / 2
            inside = [h for h in pool if start <= h.index < end]
            handles.append(self._handle(min(inside or pool, key=lambda h: abs(h.index - middle))))
        return handles

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

    def _thin(self, settled: int) -> None:
        """Keep the settled candidates (before ``settled``) on the grid, doubling its step while more than
        ``capacity`` of them remain; candidates that already have a handle stay (they cost nothing)."""
        while True:
            self._open = [h for h in self._open
                          if h.index >= settled or h.index % self._grid == 0 or h.frame is None]
            count = sum(1 for h in self._open if h.index < settled and h.frame is not None)
            if count <= self._capacity:
                return
            self._grid *= 2
