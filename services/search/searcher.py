"""Search: embed the query, retrieve per modality, fuse, filter, page, and log the search.

Results are moments: scenes (clips). A text query is embedded twice — CLIP text against the clips'
keyframe vectors (visual) and Sentence-BERT against their transcript segments (transcript); each
modality proposes candidates by ANN, then every candidate gets its exact score in both, and the scores
are fused with the request's weights (default visual 0.6, transcript 0.4). A modality that is off in
this deployment, or runs on random weights (tests), drops out of the fusion and the remaining weights
are renormalized. An image query searches the visual modality only.

Every search is the caller's (a ``Principal``): retrieval, filters and reads are scoped to the clips they own
(``Principal.scope``; administrators and the system see everyone's) inside each query, never by dropping
results afterwards, so a user who owns a small share of the index still gets their best matches. A clip of
another user is NOT_FOUND, like one that does not exist. Page tokens are bound to the caller and the query.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.common.errors import FailedPrecondition, invalid_field
from services.common.inference_types import Inference, ModelStatus
from services.common.paging import bound_to, decode_offset, encode_offset
from services.common.principal import Principal
from services.search.ports import ClipCatalog, SearchLog, VectorIndex
from services.search.records import Clip, RankedResult, SearchRecord

DEFAULT_WEIGHTS = {"visual": 0.6, "transcript": 0.4}
MAX_QUERY_CHARS = 1000
STATUS_TTL_S = 5.0


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


class Searcher:
    def __init__(self, clips: ClipCatalog, index: VectorIndex, inference: Inference, search_log: SearchLog, *,
                 candidates: int = 200, max_page_size: int = 100, allow_random_weights: bool = False) -> None:
        self._clips = clips
        self._log = search_log
        self._index = index
        self._inference = inference
        self._candidates = candidates
        self._max_page_size = max_page_size
        self._allow_random = allow_random_weights
        self._status: tuple[float, dict[str, ModelStatus]] | None = None

    async def _models(self) -> dict[str, ModelStatus]:
        """Model status, refreshed at most every STATUS_TTL_S (it costs a few RPCs to Triton)."""
        now = time.monotonic()
        if self._status is None or now - self._status[0] > STATUS_TTL_S:
            self._status = (now, await self._inference.status())
        return self._status[1]

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
        return q.weights if any(q.weights.values()) else DEFAULT_WEIGHTS

    def _ranks(self, status: ModelStatus) -> bool:
        """Whether a model may affect ranking: usable, and not random weights unless allowed."""
        return status.state == "ready" or (status.state == "degraded" and self._allow_random)

    async def search(self, q: SearchQuery, caller: Principal) -> SearchPage:
        """The page of ``caller``'s clips that best match ``q`` (everyone's for administrators)."""
        started = time.perf_counter()
        weights = self._validate(q)
        # One user's token cannot page another's results, nor another query's.
        binding = bound_to(caller.user_id, q.fingerprint())
        offset = decode_offset(q.page_token, binding)
        size = q.page_size or 10

        ranked = await self._ranked(q, weights, caller.scope)
        page = ranked[offset:offset + size]
        next_token = encode_offset(offset + size, binding) if offset + size < len(ranked) else ""
        search_id = uuid.uuid4()
        self._log.record(SearchRecord(
            search_id, q.text, bool(q.image), len(ranked), (time.perf_counter() - started) * 1000,
            datetime.now(UTC), caller.user_id, offset,
            tuple(RankedResult(h.clip.id, h.clip.video_id, offset + i + 1, h.score) for i, h in enumerate(page)),
        ))
        return SearchPage(page, next_token, search_id)

    async def _query_vectors(self, q: SearchQuery) -> dict[str, tuple[str, object]]:
        """Per active modality: (model id, query vector)."""
        models = await self._models()
        vectors: dict[str, tuple[str, object]] = {}
        visual_on = self._ranks(models["clip_image"]) and self._ranks(models["clip_text"])
        if q.image:
            if not visual_on:
                raise FailedPrecondition(
                    "image queries need CLIP, which is off here: " + (models["clip_image"].detail or "no weights"),
                    reason="MODALITY_OFF", metadata={"setting": models["clip_image"].setting},
                )
            (result,) = await self._inference.embed_images([q.image])
            if isinstance(result, Exception):
                raise invalid_field("image", f"cannot use this image: {result}", reason="INVALID_IMAGE")
            vectors["visual"] = (models["clip_image"].model_id, result)
            return vectors
        text = q.text.strip()
        if visual_on:
            vectors["visual"] = (models["clip_image"].model_id, (await self._inference.embed_clip_texts([text]))[0])
        if self._ranks(models["sbert"]):
            vectors["transcript"] = (models["sbert"].model_id, (await self._inference.embed_sentences([text]))[0])
        if not vectors:
            raise FailedPrecondition("no search model is available", reason="MODALITY_OFF")
        return vectors

    async def _ranked(self, q: SearchQuery, weights: dict[str, float], owner: uuid.UUID | None) -> list[SearchHit]:
        """Every candidate clip of ``owner`` (None: anyone's), fused and sorted. ``q.video_ids`` naming another
        user's video finds nothing: the owner filter applies to it as to everything else."""
        vectors = await self._query_vectors(q)
        video_ids = q.video_ids or None
        visual: dict[uuid.UUID, float] = {}
        transcript: dict[uuid.UUID, tuple[float, uuid.UUID | None]] = {}  # clip -> (best score, segment)
        candidates: set[uuid.UUID] = set()
        if "visual" in vectors:
            model, vec = vectors["visual"]
            hits = await self._index.query("visual", model, vec, self._candidates, video_ids,  # type: ignore[arg-type]
                                           owner=owner)
            candidates.update(h.id for h in hits)
        if "transcript" in vectors:
            model, vec = vectors["transcript"]
            hits = await self._index.query("transcript", model, vec, self._candidates,  # type: ignore[arg-type]
                                           video_ids, owner=owner)
            segments = await self._clips.segments_with_clips([h.id for h in hits], owner=owner)
            candidates.update(seg.clip_id for seg in segments.values())
        if not candidates:
            return []
        clips = await self._clips.clips_for_search(
            list(candidates), owner=owner, min_duration_s=q.min_duration_s, max_duration_s=q.max_duration_s,
            created_after=q.created_after, created_before=q.created_before,
        )
        if "visual" in vectors:
            model, vec = vectors["visual"]
            visual = await self._index.scores("visual", model, vec, list(clips))  # type: ignore[arg-type]
        if "transcript" in vectors:
            model, vec = vectors["transcript"]
            by_clip = await self._clips.segment_ids_by_clip(list(clips), owner=owner)
            seg_to_clip = {seg: clip for clip, segs in by_clip.items() for seg in segs}
            scores = await self._index.scores("transcript", model, vec, list(seg_to_clip))  # type: ignore[arg-type]
            for seg_id, score in scores.items():
                clip_id = seg_to_clip[seg_id]
                if clip_id not in transcript or score > transcript[clip_id][0]:
                    transcript[clip_id] = (score, seg_id)
        matched = await self._clips.segments_with_clips([seg for _, seg in transcript.values() if seg], owner=owner)
        results = []
        for clip_id, clip in clips.items():
            v_score = visual.get(clip_id, 0.0)
            t_score, best_segment = transcript.get(clip_id, (0.0, None))
            score = fuse({"visual": v_score if "visual" in vectors else None,
                          "transcript": t_score if "transcript" in vectors else None}, weights)
            if score < q.min_score:
                continue
            seg = matched.get(best_segment) if best_segment else None
            results.append(SearchHit(clip, score, v_score, t_score, seg.text if seg else "",
                                     seg.start_s if seg else clip.start_s, seg.end_s if seg else clip.end_s))
        results.sort(key=lambda h: (-h.score, str(h.clip.video_id), h.clip.start_s))
        return results

    async def similar(self, clip_id: uuid.UUID, q: SearchQuery, caller: Principal) -> SearchPage:
        """``caller``'s clips that look like ``clip_id`` (visual vectors), best first, the clip itself excluded;
        NOT_FOUND when ``clip_id`` is not theirs (nor anyone's, for administrators)."""
        if q.page_size < 0 or q.page_size > self._max_page_size:
            raise invalid_field("page_size", f"must be between 0 and {self._max_page_size}")
        binding = bound_to(caller.user_id, q.fingerprint(), "similar", clip_id)
        offset = decode_offset(q.page_token, binding)
        size = q.page_size or 10
        owner = caller.scope
        await self._clips.get(clip_id, owner=owner)  # before its vector is read: NOT_FOUND for another's clip
        found = await self._index.get("visual", clip_id)
        if found is None:
            raise FailedPrecondition("this clip has no visual vector (CLIP was off when it was indexed)",
                                     reason="NO_VISUAL_VECTOR")
        model, vec = found
        hits = await self._index.query("visual", model, vec, self._candidates + 1, q.video_ids or None, owner=owner)
        scores = {h.id: h.score for h in hits if h.id != clip_id}
        clips = await self._clips.clips_for_search(
            list(scores), owner=owner, min_duration_s=q.min_duration_s, max_duration_s=q.max_duration_s,
            created_after=q.created_after, created_before=q.created_before,
        )
        ranked = sorted(
            (SearchHit(c, scores[i], scores[i], 0.0, "", c.start_s, c.end_s) for i, c in clips.items()),
            key=lambda h: -h.score,
        )
        page = ranked[offset:offset + size]
        more = offset + size < len(ranked)
        token = encode_offset(offset + size, binding) if more else ""
        return SearchPage(page, token, uuid.uuid4())

    async def get_clip(self, clip_id: uuid.UUID, caller: Principal) -> Clip:
        """The clip if ``caller`` may see it; NOT_FOUND otherwise (as for a clip that does not exist)."""
        return await self._clips.get(clip_id, owner=caller.scope)
