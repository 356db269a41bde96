"""Lexical match and moments in search (issue 10), on real PostgreSQL full-text search + pgvector, through the
search domain (``Searcher`` over ``PgRetrieval``): a rare word or a name found once in a transcript comes first
even when the Sentence-BERT score of its cue is low; a quoted phrase ranks its moment first; ``-word`` excludes;
the match points at the matching cue inside a long scene; another user's words are neither found nor counted.

CLIP reports random weights here (as in the end-to-end mesh), so it takes no part in ranking; the query's
Sentence-BERT vector is set to aim at a chosen cue (``QueryVectors``), so "SBERT prefers another moment" is a
fact of the test, not of a model."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from clipmind.search.internal.v1 import search_internal_service_pb2 as internal_pb

from services.common.db import Database
from services.common.ids import derived_id
from services.common.principal import Principal
from services.inference.ports import ModelStatus
from services.search.clip_store import ClipStore
from services.search.internal_servicer import SearchInternalServicer
from services.search.retrieval import PgRetrieval
from services.search.searcher import Searcher, SearchQuery
from services.search.vectors import PgVectorIndex
from tests.db_setup import ServicerStub, service_db
from tests.integration.test_search_ownership import Logged, QueryVectors

pytestmark = pytest.mark.integration

# (clip start, clip end, [(cue start, cue end, text)]): the first scene is 40 s with three lines.
SCENES = [
    (0.0, 40.0, [(2.0, 5.0, "welcome everyone to the weekly meeting"),
                 (18.0, 21.0, "our partner in Zanzibar signed the contract"),
                 (30.0, 33.0, "thanks for listening and see you next week")]),
    (40.0, 50.0, [(41.0, 44.0, "the quarterly revenue grew by ten percent")]),
    (50.0, 60.0, [(51.0, 54.0, "revenue this quarter and every quarter is reviewed quarterly")]),
    (60.0, 70.0, [(61.0, 64.0, "we visited an island off the coast of east africa")]),
]


class TextOnly(QueryVectors):
    """CLIP on random weights (drops out of ranking, as in the end-to-end mesh); Sentence-BERT ready."""

    async def status(self) -> dict[str, ModelStatus]:
        found = await super().status()
        found["clip_image"] = ModelStatus("clip_image", "degraded", self.visual_model)
        found["clip_text"] = ModelStatus("clip_text", "degraded", "clip-text")
        return found


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class Library:
    """Alice's video of ``SCENES`` and Bob's video that also says "Zanzibar", indexed and READY."""

    def __init__(self, db: Database) -> None:
        self.models = TextOnly(uuid.uuid4().hex[:8])
        self.store = ClipStore(db)
        self.internal = ServicerStub(SearchInternalServicer(self.store))
        self.searcher = Searcher(self.store, PgRetrieval(db), PgVectorIndex(db), self.models,  # type: ignore[arg-type]
                                 Logged())
        self.cue_vectors: dict[str, np.ndarray] = {}
        self.clips: dict[uuid.UUID, list[uuid.UUID]] = {}
        self.alice = Principal(uuid.uuid4(), "user")

    async def index(self, owner: Principal, scenes: list[tuple[float, float, list[tuple[float, float, str]]]],
                    seed: int) -> uuid.UUID:
        rng, video_id = np.random.default_rng(seed), uuid.uuid4()
        request = internal_pb.ReplaceVideoIndexRequest(
            video=f"videos/{video_id}", fence=1, owner=owner.name,
            transcript_model=self.models.transcript_model, visual_model=self.models.visual_model)
        n = 0
        for i, (start, end, cues) in enumerate(scenes):
            clip_id = derived_id(video_id, "clip", i)
            request.clips.add(id=str(clip_id), index=i, start_seconds=start, end_seconds=end,
                              visual_embedding=_unit(rng, 512).tolist())
            for cue_start, cue_end, text in cues:
                vector = _unit(rng, 384)
                self.cue_vectors.setdefault(text, vector)
                request.segments.add(id=str(derived_id(video_id, "segment", n)), clip_id=str(clip_id), index=n,
                                     start_seconds=cue_start, end_seconds=cue_end, text=text, source="SIDECAR",
                                     embedding=vector.tolist())
                n += 1
            self.clips.setdefault(video_id, []).append(clip_id)
        await self.internal.ReplaceVideoIndex(request)
        await self.internal.UpsertVideoFacts(internal_pb.UpsertVideoFactsRequest(facts=internal_pb.VideoFacts(
            video=f"videos/{video_id}", revision=1, state="READY", title="talk", owner=owner.name)))
        return video_id

    def aim(self, query: str, cue_text: str) -> None:
        """Sentence-BERT's vector of ``query`` is that of the cue ``cue_text``: its best paraphrase match."""
        self.models.transcript[query] = self.cue_vectors[cue_text]
        self.models.visual[query] = np.ones(512, np.float32) / np.sqrt(512)


@pytest.fixture
async def library(pg_dsn: str) -> AsyncIterator[tuple[Library, uuid.UUID]]:
    """New users for each test (the session's database is shared): Alice's video of ``SCENES``, Bob's cue."""
    db = await service_db(pg_dsn, "search")
    try:
        lib = Library(db)
        lib.alice, bob = Principal(uuid.uuid4(), "user"), Principal(uuid.uuid4(), "user")
        video = await lib.index(lib.alice, SCENES, seed=1)
        await lib.index(bob, [(0.0, 10.0, [(1.0, 3.0, "Zanzibar Zanzibar Zanzibar")])], seed=2)
        yield lib, video
    finally:
        await db.close()


async def _search(lib: Library, text: str, **options: object) -> list:  # type: ignore[type-arg]
    query = SearchQuery(text=text, min_score=-1.0, **options)  # type: ignore[arg-type]
    return (await lib.searcher.search(query, lib.alice)).hits


async def test_a_rare_name_is_found_first_by_lexical_match(library: tuple[Library, uuid.UUID]) -> None:
    lib, video = library
    lib.aim("Zanzibar", SCENES[3][2][0][2])  # SBERT prefers the island paraphrase in the last scene
    for fusion in ("weighted", "rrf"):
        hits = await _search(lib, "Zanzibar", fusion=fusion)
        first = hits[0]
        assert first.clip.id == lib.clips[video][0], fusion
        assert first.signals[0] == "lexical" and first.lexical_score == pytest.approx(1.0)
        assert first.matched_text == "our partner in Zanzibar signed the contract"
        # The moment is the line inside the 40 s scene, not the scene.
        assert abs(first.match_start_s - 18.0) <= 0.5 and abs(first.match_end_s - 21.0) <= 0.5
        assert {h.clip.video_id for h in hits} == {video}, "Bob's cue is not Alice's result"
        assert hits[1].clip.id == lib.clips[video][3] and hits[1].signals == ("transcript",)


async def test_a_quoted_phrase_ranks_its_moment_first(library: tuple[Library, uuid.UUID]) -> None:
    lib, video = library
    query = '"quarterly revenue"'
    lib.aim(query, SCENES[2][2][0][2])  # SBERT prefers the scene that has both words, but not as the phrase
    hits = await _search(lib, query)
    assert hits[0].clip.id == lib.clips[video][1]
    assert hits[0].matched_text == "the quarterly revenue grew by ten percent"
    assert "lexical" not in hits[1].signals  # the other scene has the words, not the phrase

    lib.aim("quarter -reviewed", SCENES[0][2][0][2])
    hits = await _search(lib, "quarter -reviewed", weights={"lexical": 1.0})
    assert [h.clip.id for h in hits] == [lib.clips[video][1]]


async def test_a_transcript_match_points_at_its_cue_and_common_words_weigh_little(
    library: tuple[Library, uuid.UUID],
) -> None:
    lib, video = library
    lib.aim("goodbye", SCENES[0][2][2][2])
    (hit, *_) = await _search(lib, "goodbye", weights={"transcript": 1.0})
    assert hit.clip.id == lib.clips[video][0] and hit.matched_text.startswith("thanks for listening")
    assert (hit.match_start_s, hit.match_end_s) == (30.0, 33.0)

    # "Zanzibar" is in one of Alice's cues, "revenue" in two: the cue with the rarer word scores higher than those
    # with only the commoner one (Bob's cues count for nothing), and a query of stop words finds nothing.
    lib.aim("revenue Zanzibar", SCENES[3][2][0][2])
    hits = await _search(lib, "revenue Zanzibar", weights={"lexical": 1.0})
    scores = {h.clip.id: h.lexical_score for h in hits}
    assert hits[0].clip.id == lib.clips[video][0]
    assert scores[lib.clips[video][0]] > scores[lib.clips[video][1]] == scores[lib.clips[video][2]] > 0
    lib.aim("the and of", SCENES[3][2][0][2])
    assert await _search(lib, "the and of", weights={"lexical": 1.0}) == []


async def test_group_by_video_keeps_each_videos_best_moment(library: tuple[Library, uuid.UUID]) -> None:
    lib, video = library
    other = await lib.index(lib.alice, [(0.0, 10.0, [(2.0, 5.0, "quarterly revenue again")])], seed=3)
    lib.aim("quarterly revenue", SCENES[1][2][0][2])
    every = await _search(lib, "quarterly revenue")
    assert len({h.clip.video_id for h in every}) == 2 and len(every) > 2
    grouped = await _search(lib, "quarterly revenue", group_by_video=True)
    assert [h.clip.video_id for h in grouped] == list(dict.fromkeys(h.clip.video_id for h in every))
    assert grouped[0].clip.id == every[0].clip.id and {video, other} == {h.clip.video_id for h in grouped}


async def test_a_moment_spans_the_sentence_its_cue_belongs_to(library: tuple[Library, uuid.UUID]) -> None:
    lib, _ = library
    video = await lib.index(lib.alice, [(0.0, 30.0, [
        (2.0, 4.0, "Good evening."), (5.0, 7.5, "The treaty was finally signed"),
        (7.6, 10.0, "on a beach in Mombasa last spring."), (12.0, 14.0, "Then everyone went home.")])], seed=4)
    lib.aim("Mombasa", SCENES[3][2][0][2])
    (hit, *_) = await _search(lib, "Mombasa", weights={"lexical": 1.0})
    assert hit.clip.video_id == video
    assert hit.matched_text == "The treaty was finally signed on a beach in Mombasa last spring."
    assert (hit.match_start_s, hit.match_end_s) == (5.0, 10.0)
