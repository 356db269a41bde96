"""Fusion: the signals' ranked lists (visual, transcript, lexical; each ``ports.Match`` best first) become one.

Two methods, chosen per request:

* ``weighted``: the vector signals' scores are min-max normalised over that signal's own candidates (CLIP
  cosines sit around 0.2-0.35, Sentence-BERT's spread over 0-0.9, so raw cosines do not compare; Weaviate's
  "relative score fusion"), then averaged with the weights; a clip a signal did not propose counts 0 there. A
  signal with a single candidate (or all equal) gives it 1. The lexical score is already on an absolute 0..1
  scale (the share of the query's weight of words that the cue contains, ``retrieval``) and is used as it is:
  min-max would lift a cue that only shares a common word with the query to 1.
* ``rrf``: reciprocal rank fusion (Cormack et al. 2009), the sum over signals of ``weight / (k + rank)`` with
  k = 60 and ranks from 1; scores are ignored, only order counts.

Weights are normalised over the signals that proposed anything in this search, so a signal that found nothing
(no word of the query in any transcript) does not scale every result down.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.search.ports import Match

SIGNALS = ("visual", "transcript", "lexical")
ABSOLUTE = frozenset({"lexical"})  # signals whose scores are 0..1 already: not min-max normalised
RRF_K = 60
METHODS = ("weighted", "rrf")


@dataclass(frozen=True)
class Fused:
    """One clip's fused score and each signal's part of it (signals that proposed it only)."""

    clip_id: uuid.UUID
    score: float
    parts: dict[str, float]

    @property
    def signals(self) -> tuple[str, ...]:
        """The signals that proposed this clip, largest contribution first (ties in ``SIGNALS`` order)."""
        return tuple(sorted(self.parts, key=lambda s: (-self.parts[s], SIGNALS.index(s))))


def _used_weights(lists: Mapping[str, Sequence[Match]], weights: Mapping[str, float]) -> dict[str, float]:
    used = {s: weights.get(s, 0.0) for s, found in lists.items() if found and weights.get(s, 0.0) > 0}
    total = sum(used.values())
    return {s: w / total for s, w in used.items()} if total > 0 else {}


def normalized(scores: Sequence[float]) -> list[float]:
    """Min-max normalisation to 0..1; all equal (or one) → 1."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high - low <= 1e-12:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def weighted(lists: Mapping[str, Sequence[Match]], weights: Mapping[str, float]) -> list[Fused]:
    """Weighted mean of min-max normalised scores; best first (ties by clip id, for a stable order)."""
    used = _used_weights(lists, weights)
    parts: dict[uuid.UUID, dict[str, float]] = {}
    for signal, w in used.items():
        found = lists[signal]
        scores = [m.score for m in found]
        for match, norm in zip(found, scores if signal in ABSOLUTE else normalized(scores), strict=True):
            parts.setdefault(match.clip_id, {})[signal] = w * norm
    return _ranked(parts)


def rrf(lists: Mapping[str, Sequence[Match]], weights: Mapping[str, float], k: int = RRF_K) -> list[Fused]:
    """Weighted reciprocal rank fusion; best first (ties by clip id)."""
    used = _used_weights(lists, weights)
    parts: dict[uuid.UUID, dict[str, float]] = {}
    for signal, w in used.items():
        for rank, match in enumerate(lists[signal], start=1):
            parts.setdefault(match.clip_id, {})[signal] = w / (k + rank)
    return _ranked(parts)


def _ranked(parts: dict[uuid.UUID, dict[str, float]]) -> list[Fused]:
    fused = [Fused(clip, sum(p.values()), p) for clip, p in parts.items()]
    fused.sort(key=lambda f: (-f.score, str(f.clip_id)))
    return fused


def fuse(method: str, lists: Mapping[str, Sequence[Match]], weights: Mapping[str, float]) -> list[Fused]:
    if method == "rrf":
        return rrf(lists, weights)
    if method == "weighted":
        return weighted(lists, weights)
    raise ValueError(f"unknown fusion method {method!r}")
