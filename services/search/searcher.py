"""Search: embed the query, retrieve per signal, fuse, page, enrich and log the search.

Results are moments: scenes (clips) and, inside them, the transcript cue or the keyframe that matched. Three
signals propose clips, each through one query of ``ports.Retrieval`` that applies the filters itself: **visual**
(CLIP text embedding of the query against the clips' keyframe vectors, one keyframe per few seconds of a scene: a
clip scores its best frame's similarity, and that frame is the result's thumbnail and, when no transcript passage
matched, its moment), **transcript** (Sentence-BERT against the cues) and **lexical** (full-text match of the
query's words and quoted phrases in the cues: names, rare words, exact phrases). Their ranked lists are fused per
request (``fusion``: weighted, the default, or reciprocal rank fusion) with the request's weights (default visual
0.6, transcript 0.4, lexical 0.5). A model that is off in this deployment, or runs on random weights (tests), drops
out and the remaining weights are renormalized; lexical needs no model. An image query searches the visual signal
only.

The lexical query and both query encoders start at once; each vector query starts as soon as its own encoder has
answered.
Each stage's time goes with the page (``SearchPage.timings``, milliseconds), for the ``Server-Timing`` header.

Every search is the caller's (a ``Principal``): retrieval, filters and reads are scoped to the clips they own
(``Principal.scope``; administrators and the system see everyone's) inside each query, never by dropping
results afterwards, so a user who owns a small share of the index still gets their best matches. A clip of
another user is NOT_FOUND, like one that does not exist. Page tokens are bound to the caller and the query.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np

from services.common.errors import FailedPrecondition, invalid_field
from services.common.paging import bound_to, decode_offset, encode_offset
from services.common.principal import Principal
from services.common.query_text import normalized_query
from services.inference.ports import Inference, ModelStatus
from services.search import fusion
from services.search.ports import ClipCatalog, ClipFilter, Match, QueryCache, Retrieval, SearchLog, VectorIndex
from services.search.records import Clip, RankedResult, SearchRecord, Segment

# The seed's visual 0.6 / transcript 0.4; lexical a little above transcript, so that a cue containing the query's
# rare word or quoted phrase outranks a paraphrase of another moment (provisional until the evaluation set).
DEFAULT_WEIGHTS = {"visual": 0.6, "transcript": 0.4, "lexical": 0.5}
MAX_QUERY_CHARS = 1000
STATUS_TTL_S = 5.0
T = TypeVar("T")


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    image: bytes = b""
    video_ids: tuple[uuid.UUID, ...] = ()
    min_duration_s: float = 0.0  # of the clip
    max_duration_s: float = 0.0
    created_after: datetime | None = None
    created_before: datetime | None = None
    weights: dict[str, float] = field(default_factory=dict)
    min_score: float = 0.0
    page_size: int = 10
    page_token: str = ""
    fusion: str = ""  # "weighted" or "rrf"; "" for the server's default
    group_by_video: bool = False  # one result per video: its best moment

    def fingerprint(self) -> str:
        """Identifies the query apart from paging, so a token is only accepted for the same query."""
        body = json.dumps([self.text, hashlib.sha256(self.image).hexdigest(), [str(v) for v in self.video_ids],
                           self.min_duration_s, self.max_duration_s, str(self.created_after),
                           str(self.created_before), sorted(self.weights.items()), self.min_score, self.fusion,
                           self.group_by_video])
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def where(self, owner: uuid.UUID | None, exclude: uuid.UUID | None = None) -> ClipFilter:
        return ClipFilter(owner, self.video_ids, self.min_duration_s, self.max_duration_s, self.created_after,
                          self.created_before, exclude)


@dataclass(frozen=True)
class SearchHit:
    clip: Clip
    score: float
    visual_score: float
    transcript_score: float
    matched_text: str
    match_start_s: float
    match_end_s: float
    lexical_score: float = 0.0
    signals: tuple[str, ...] = ()  # the signals that proposed the clip, largest contribution first
    match_thumbnail_key: str = ""  # the best-matching keyframe's image, else the clip's


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    next_page_token: str
    search_id: uuid.UUID
    timings: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds


@dataclass(frozen=True)
class Ranked:
    """One clip of a fused ranking, with what each signal found of it: what the query cache keeps."""

    clip_id: uuid.UUID
    video_id: uuid.UUID
    score: float
    signals: tuple[str, ...]  # largest contribution first
    scores: dict[str, float]  # each proposing signal's own score
    text: str = ""  # the matching cue ("" for none: the moment is the best keyframe's stretch, else the clip)
    start_s: float = 0.0
    end_s: float = 0.0
    cue_id: uuid.UUID | None = None
    frame_key: str = ""  # the best-matching keyframe's image ("" when the visual signal did not propose the clip)
    frame_start_s: float = 0.0  # the stretch of the scene that keyframe stands for
    frame_end_s: float = 0.0


def rank(fused: list[fusion.Fused], lists: dict[str, list[Match]]) -> list[Ranked]:
    """The fused order with each clip's signal scores and its moment: the cue of the transcript signal that
    contributed most (transcript or lexical), else none; and the keyframe the visual signal matched, if it did."""
    by_signal = {signal: {m.clip_id: m for m in found} for signal, found in lists.items()}
    ranked = []
    for f in fused:
        found = {signal: by_signal[signal][f.clip_id] for signal in f.signals}
        cue = next((found[s] for s in f.signals if s != "visual" and found[s].text), None)
        frame = found.get("visual")
        video_id = next(iter(found.values())).video_id
        ranked.append(Ranked(f.clip_id, video_id, f.score, f.signals, {s: m.score for s, m in found.items()},
                             cue.text if cue else "", cue.start_s if cue else 0.0, cue.end_s if cue else 0.0,
                             cue.cue_id if cue else None, *_frame(frame)))
    return ranked


def _frame(match: Match | None) -> tuple[str, float, float]:
    """(image, start, end) of the keyframe a visual match found; empty when none."""
    return (match.thumbnail_key, match.start_s, match.end_s) if match is not None else ("", 0.0, 0.0)


def best_per_video(ranked: list[Ranked]) -> list[Ranked]:
    """The first (best) moment of each video, in ranking order."""
    seen: set[uuid.UUID] = set()
    kept = []
    for r in ranked:
        if r.video_id not in seen:
            seen.add(r.video_id)
            kept.append(r)
    return kept


# The layout of an encoded ranking; part of every cache key, so a ranking cached in an older layout is never read.
RANKING_FORMAT = 2


def encode_ranking(ranked: list[Ranked]) -> bytes:
    return json.dumps([[str(r.clip_id), str(r.video_id), r.score, r.signals, r.scores, r.text, r.start_s, r.end_s,
                        str(r.cue_id) if r.cue_id else "", r.frame_key, r.frame_start_s, r.frame_end_s]
                       for r in ranked], separators=(",", ":")).encode()


def decode_ranking(data: bytes) -> list[Ranked]:
    return [Ranked(uuid.UUID(c), uuid.UUID(v), s, tuple(sig), dict(sc), t, a, b, uuid.UUID(q) if q else None,
                   k, fa, fb)
            for c, v, s, sig, sc, t, a, b, q, k, fa, fb in json.loads(data)]


# A moment widens over neighbouring cues while a sentence runs across them: up to this many cues each way,
# never past a pause this long, nor wider than this.
SENTENCE_REACH = 3
SENTENCE_GAP_S = 2.0
SENTENCE_MAX_S = 20.0
_TERMINAL = (".", "!", "?", "…", '."', '!"', '?"', ".'", "!'", "?'", ".»", "。", "！", "？")


def _ends_sentence(text: str) -> bool:
    return text.rstrip().endswith(_TERMINAL)


def _continues(text: str) -> bool:
    """Whether a cue reads as the rest of a sentence: its first letter is lower case ("grew by twelve percent");
    a capital starts a new one (subtitles often drop the full stop: "in a bad humor" / "Somebody must've…")."""
    first = next((c for c in text if c.isalpha()), "")
    return first.islower()


def sentence_window(cues: list[Segment], center: uuid.UUID) -> tuple[str, float, float]:
    """The matched cue widened to the sentence it is part of: an earlier cue joins while it does not end a sentence
    and the cue after it starts in lower case, a later one likewise (subtitles split long sentences over cues).
    Only where the transcript punctuates at all (some cue ends a sentence); within ``SENTENCE_GAP_S`` between
    cues and ``SENTENCE_MAX_S`` in all."""
    at = next(i for i, c in enumerate(cues) if c.id == center)
    first = last = at
    if any(_ends_sentence(c.text) for c in cues):
        while (first > 0 and not _ends_sentence(cues[first - 1].text) and _continues(cues[first].text)
               and cues[first].start_s - cues[first - 1].end_s <= SENTENCE_GAP_S
               and cues[last].end_s - cues[first - 1].start_s <= SENTENCE_MAX_S):
            first -= 1
        while (last < len(cues) - 1 and not _ends_sentence(cues[last].text) and _continues(cues[last + 1].text)
               and cues[last + 1].start_s - cues[last].end_s <= SENTENCE_GAP_S
               and cues[last + 1].end_s - cues[first].start_s <= SENTENCE_MAX_S):
            last += 1
    span = cues[first:last + 1]
    return " ".join(c.text.strip() for c in span), span[0].start_s, span[-1].end_s


async def _nothing() -> dict[uuid.UUID, list[Segment]]:
    return {}


async def _timed(timings: dict[str, float], stage: str, work: Awaitable[T]) -> T:
    started = time.perf_counter()
    try:
        return await work
    finally:
        timings[stage] = (time.perf_counter() - started) * 1000


class Searcher:
    def __init__(self, clips: ClipCatalog, retrieval: Retrieval, vectors: VectorIndex, inference: Inference,
                 search_log: SearchLog, *, candidates: int = 100, max_page_size: int = 100,
                 allow_random_weights: bool = False, default_fusion: str = "weighted",
                 cache: QueryCache | None = None, encodings_cached: int = 1024) -> None:
        if default_fusion not in fusion.METHODS:
            raise ValueError(f"unknown fusion method {default_fusion!r}")
        self._clips = clips
        self._retrieval = retrieval
        self._vectors = vectors  # a clip's own vector, for similar clips
        self._log = search_log
        self._inference = inference
        self._candidates = candidates
        self._max_page_size = max_page_size
        self._allow_random = allow_random_weights
        self._default_fusion = default_fusion
        self._cache = cache
        self._encodings: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # (model, text) -> vector
        self._encodings_max = encodings_cached
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
        if q.fusion and q.fusion not in fusion.METHODS:
            raise invalid_field("fusion", f"one of {', '.join(fusion.METHODS)}")
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
        timings: dict[str, float] = {}

        method = q.fusion or self._default_fusion
        key = self._cache_key(q, weights, method, await self._models())
        lookup = await _timed(timings, "cache", self._cache.get(caller.scope, key)) if self._cache else None
        if lookup is not None and lookup.value is not None:
            everything = lookup.value
        else:
            lists = await self._retrieve(q, weights, q.where(caller.scope), timings)
            t0 = time.perf_counter()
            everything = rank(fusion.fuse(method, lists, weights), lists)
            timings["fuse"] = (time.perf_counter() - t0) * 1000
            if self._cache is not None and lookup is not None:
                await _timed(timings, "cache_put",
                             self._cache.put(caller.scope, key, everything, lookup.seen))
        ranked = [r for r in everything if r.score >= q.min_score]
        if q.group_by_video:
            ranked = best_per_video(ranked)
        page = await _timed(timings, "enrich", self._hits(ranked[offset:offset + size], caller.scope))
        next_token = encode_offset(offset + size, binding) if offset + size < len(ranked) else ""
        search_id = uuid.uuid4()
        t0 = time.perf_counter()
        self._log.record(SearchRecord(
            search_id, q.text, bool(q.image), len(ranked), (time.perf_counter() - started) * 1000,
            datetime.now(UTC), caller.user_id, offset,
            tuple(RankedResult(h.clip.id, h.clip.video_id, offset + i + 1, h.score) for i, h in enumerate(page)),
            method, q.video_ids, q.min_duration_s, q.max_duration_s, q.created_after, q.created_before,
        ))
        timings["log"] = (time.perf_counter() - t0) * 1000
        timings["total"] = (time.perf_counter() - started) * 1000
        return SearchPage(page, next_token, search_id, timings)

    async def _hits(self, ranked: list[Ranked], owner: uuid.UUID | None) -> list[SearchHit]:
        """The page's clips as results show them, each moment widened to its sentence (two reads, at once); a
        clip deleted since it was ranked is left out."""
        if not ranked:
            return []
        cue_ids = [r.cue_id for r in ranked if r.cue_id is not None]
        clips, around = await asyncio.gather(
            self._clips.get_many([r.clip_id for r in ranked], owner=owner),
            self._clips.cues_around(cue_ids, owner=owner, reach=SENTENCE_REACH) if cue_ids else _nothing())
        hits = []
        for r in ranked:
            clip = clips.get(r.clip_id)
            if clip is None:
                continue
            text, start, end = r.text, r.start_s, r.end_s
            if r.cue_id is not None and around.get(r.cue_id):
                text, start, end = sentence_window(around[r.cue_id], r.cue_id)
            if not text:  # no passage: the stretch the matching keyframe stands for, else the whole clip
                start, end = (r.frame_start_s, r.frame_end_s) if r.frame_key else (clip.start_s, clip.end_s)
            hits.append(SearchHit(
                clip, r.score, r.scores.get("visual", 0.0), r.scores.get("transcript", 0.0), text, start, end,
                r.scores.get("lexical", 0.0), r.signals, r.frame_key or clip.thumbnail_key,
            ))
        return hits

    def _cache_key(self, q: SearchQuery, weights: dict[str, float], method: str,
                   models: dict[str, ModelStatus]) -> str:
        """What makes a ranking: the normalized query, the filters, the weights, the fusion, the number of
        candidates and the models (a new model never meets an old ranking); not paging, not min_score."""
        body = json.dumps([RANKING_FORMAT, normalized_query(q.text),
                           hashlib.sha256(q.image).hexdigest() if q.image else "",
                           sorted(str(v) for v in q.video_ids), q.min_duration_s, q.max_duration_s,
                           str(q.created_after), str(q.created_before), sorted(weights.items()), method,
                           self._candidates, sorted((n, m.state, m.model_id) for n, m in models.items())])
        return hashlib.sha256(body.encode()).hexdigest()

    async def _retrieve(self, q: SearchQuery, weights: dict[str, float], where: ClipFilter,
                        timings: dict[str, float]) -> dict[str, list[Match]]:
        """Each signal's candidates. The lexical query starts at once (it needs no model); the encoders run at
        once, and each vector query starts as soon as its own encoder has answered (on ONNX Runtime, both
        encoders at once through Triton 19.4 ms p50 against 27.1 ms one after the other, bench/query_encoders.py;
        with torch, at once had been the slower, 198 against 138 ms)."""
        text = q.text.strip()
        jobs: dict[str, asyncio.Future[list[Match]]] = {}
        if text and not q.image and weights.get("lexical", 0) > 0:
            jobs["lexical"] = asyncio.ensure_future(
                _timed(timings, "lexical", self._retrieval.lexical(text, self._candidates, where)))

        def ready(signal: str, model: str, vector: np.ndarray) -> None:
            query = self._retrieval.visual if signal == "visual" else self._retrieval.transcript
            jobs[signal] = asyncio.ensure_future(
                _timed(timings, signal, query(model, vector, self._candidates, where)))

        try:
            await _timed(timings, "encode", self._query_vectors(q, weights, "lexical" in jobs, ready))
            return {signal: await job for signal, job in jobs.items()}
        finally:
            for job in jobs.values():
                if not job.done():
                    job.cancel()

    async def _query_vectors(self, q: SearchQuery, weights: dict[str, float], lexical: bool,
                             ready: Callable[[str, str, np.ndarray], None]) -> None:
        """Encode the query for each vector signal that is on and weighted, the encoders at once, handing each
        (signal, model id, vector) to ``ready`` as soon as it is there."""
        models = await self._models()
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
            ready("visual", models["clip_image"].model_id, np.asarray(result, dtype=np.float32))
            return
        text = q.text.strip()
        model_of = {"visual": models["clip_image"].model_id, "transcript": models["sbert"].model_id}
        encoders = {"visual": self._inference.embed_clip_texts, "transcript": self._inference.embed_sentences}
        wanted = []
        if self._ranks(models["sbert"]) and weights.get("transcript", 0) > 0:
            wanted.append("transcript")
        if visual_on and weights.get("visual", 0) > 0:
            wanted.append("visual")
        if not wanted and not lexical:
            raise FailedPrecondition("no search model is available for the weighted signals",
                                     reason="MODALITY_OFF")
        async def encode(signal: str) -> None:
            key = (model_of[signal], text)
            vector = self._encodings.get(key)
            if vector is None:
                vector = np.asarray((await encoders[signal]([text]))[0], dtype=np.float32)
                self._encodings[key] = vector  # the same text is embedded once
                while len(self._encodings) > self._encodings_max:
                    self._encodings.popitem(last=False)
            ready(signal, model_of[signal], vector)

        await asyncio.gather(*(encode(signal) for signal in wanted))

    async def similar(self, clip_id: uuid.UUID, q: SearchQuery, caller: Principal) -> SearchPage:
        """``caller``'s clips that look like ``clip_id`` (the mean of its keyframes' vectors, against every
        keyframe), best first, the clip itself excluded;
        NOT_FOUND when ``clip_id`` is not theirs (nor anyone's, for administrators)."""
        if q.page_size < 0 or q.page_size > self._max_page_size:
            raise invalid_field("page_size", f"must be between 0 and {self._max_page_size}")
        binding = bound_to(caller.user_id, q.fingerprint(), "similar", clip_id)
        offset = decode_offset(q.page_token, binding)
        size = q.page_size or 10
        owner = caller.scope
        await self._clips.get(clip_id, owner=owner)  # before its vector is read: NOT_FOUND for another's clip
        found = await self._vectors.clip_visual(clip_id)
        if found is None:
            raise FailedPrecondition("this clip has no visual vector (CLIP was off when it was indexed)",
                                     reason="NO_VISUAL_VECTOR")
        model, vec = found
        matches = await self._retrieval.visual(model, vec, self._candidates, q.where(owner, exclude=clip_id))
        ranked = [Ranked(m.clip_id, m.video_id, m.score, ("visual",), {"visual": m.score}, frame_key=m.thumbnail_key,
                         frame_start_s=m.start_s, frame_end_s=m.end_s) for m in matches]
        page = await self._hits(ranked[offset:offset + size], owner)
        more = offset + size < len(ranked)
        token = encode_offset(offset + size, binding) if more else ""
        return SearchPage(page, token, uuid.uuid4())

    async def get_clip(self, clip_id: uuid.UUID, caller: Principal) -> Clip:
        """The clip if ``caller`` may see it; NOT_FOUND otherwise (as for a clip that does not exist)."""
        return await self._clips.get(clip_id, owner=caller.scope)
