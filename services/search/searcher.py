"""Search: embed the query, retrieve per modality, fuse, filter, page, and log the search.

Results are moments: the scene (clip) that holds the best-matching transcript segment, with the
segment's own text and times as the highlight. Modalities without vectors for this deployment (visual,
until CLIP is enabled) drop out of the fusion and the remaining weights are renormalized.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from services.common.errors import Unimplemented, invalid_field
from services.common.inference import TextEmbedder
from services.common.records import Clip
from services.common.store import ClipStore
from services.common.vectors import VectorIndex

DEFAULT_WEIGHTS = {"visual": 0.6, "transcript": 0.4}
MAX_QUERY_CHARS = 1000


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    image: bytes = b""
    video_ids: tuple[uuid.UUID, ...] = ()
    min_duration_s: float = 0.0
    max_duration_s: float = 0.0
    created_after: datetime | None = None
    created_before: datetime | None = None
    weights: dict[str, float] = field(default_factory=dict)
    min_score: float = 0.0
    page_size: int = 10
    page_token: str = ""

    def fingerprint(self) -> str:
        """Identifies the query apart from paging, so a token is only accepted for the same query."""
        body = json.dumps([self.text, hashlib.sha256(self.image).hexdigest(), [str(v) for v in self.video_ids],
                           self.min_duration_s, self.max_duration_s, str(self.created_after),
                           str(self.created_before), sorted(self.weights.items()), self.min_score])
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SearchHit:
    clip: Clip
    score: float
    visual_score: float
    transcript_score: float
    matched_text: str
    match_start_s: float
    match_end_s: float


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    next_page_token: str
    search_id: uuid.UUID


def fuse(scores: dict[str, float | None], weights: dict[str, float]) -> float:
    """Weighted mean over the modalities that have a score for this search."""
    present = {m: s for m, s in scores.items() if s is not None}
    total = sum(weights.get(m, 0.0) for m in present)
    if total <= 0:
        return 0.0
    return sum(weights.get(m, 0.0) * s for m, s in present.items()) / total


def _encode_page(offset: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(f"{offset}:{fingerprint}".encode()).decode().rstrip("=")


def _decode_page(token: str, fingerprint: str) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        offset, fp = raw.split(":", 1)
        if fp != fingerprint or int(offset) < 0:
            raise ValueError
        return int(offset)
    except ValueError:
        raise invalid_field("page_token", "not a token returned for this same query") from None


class Searcher:
    def __init__(self, clips: ClipStore, index: VectorIndex, embedder: TextEmbedder, *,
                 candidates: int = 200, max_page_size: int = 100) -> None:
        self._clips = clips
        self._index = index
        self._embedder = embedder
        self._candidates = candidates
        self._max_page_size = max_page_size

    def _validate(self, q: SearchQuery) -> dict[str, float]:
        if not q.text.strip() and not q.image:
            raise invalid_field("query", "give a text query or an image", reason="EMPTY_QUERY")
        if len(q.text) > MAX_QUERY_CHARS:
            raise invalid_field("query", f"longer than {MAX_QUERY_CHARS} characters")
        if q.page_size < 0 or q.page_size > self._max_page_size:
            raise invalid_field("page_size", f"must be between 0 and {self._max_page_size}")
        if not -1.0 <= q.min_score <= 1.0:
            raise invalid_field("min_score", "must be between -1 and 1")
        if any(w < 0 for w in q.weights.values()):
            raise invalid_field("weights", "weights must not be negative")
        if q.max_duration_s and q.max_duration_s < q.min_duration_s:
            raise invalid_field("filter.max_duration_seconds", "smaller than min_duration_seconds")
        if q.image:
            raise Unimplemented("image queries need the CLIP model, which is not enabled yet",
                                reason="MODALITY_DISABLED")
        weights = q.weights if any(q.weights.values()) else DEFAULT_WEIGHTS
        return weights

    async def search(self, q: SearchQuery) -> SearchPage:
        started = time.perf_counter()
        weights = self._validate(q)
        offset = _decode_page(q.page_token, q.fingerprint())
        size = q.page_size or 10

        ranked = await self._ranked(q, weights)
        page = ranked[offset:offset + size]
        next_token = _encode_page(offset + size, q.fingerprint()) if offset + size < len(ranked) else ""
        search_id = uuid.uuid4()
        await self._clips.log_search(search_id, q.text, len(ranked), (time.perf_counter() - started) * 1000)
        return SearchPage(page, next_token, search_id)

    async def _ranked(self, q: SearchQuery, weights: dict[str, float]) -> list[SearchHit]:
        vector = (await self._embedder.embed_texts([q.text.strip()]))[0]
        hits = await self._index.query("transcript", self._embedder.model_id, vector, self._candidates,
                                       q.video_ids or None)
        if not hits:
            return []
        segments = await self._clips.segments_with_clips([h.id for h in hits])
        best: dict[uuid.UUID, tuple[float, uuid.UUID]] = {}
        for hit in hits:
            seg = segments.get(hit.id)
            if seg is not None and (seg.clip_id not in best or hit.score > best[seg.clip_id][0]):
                best[seg.clip_id] = (hit.score, seg.id)
        clips = await self._clips.clips_for_search(
            list(best), min_duration_s=q.min_duration_s, max_duration_s=q.max_duration_s,
            created_after=q.created_after, created_before=q.created_before,
        )
        results = []
        for clip_id, (t_score, seg_id) in best.items():
            clip = clips.get(clip_id)
            if clip is None:
                continue
            score = fuse({"visual": None, "transcript": t_score}, weights)
            if score < q.min_score:
                continue
            seg = segments[seg_id]
            results.append(SearchHit(clip, score, 0.0, t_score, seg.text, seg.start_s, seg.end_s))
        results.sort(key=lambda h: (-h.score, h.clip.start_s))
        return results

    async def get_clip(self, clip_id: uuid.UUID) -> Clip:
        return await self._clips.get(clip_id)
