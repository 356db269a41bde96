"""Ownership in search (issue 9), on real PostgreSQL + pgvector: a user finds and reads only their own clips,
an administrator everyone's; another user's clip is NOT_FOUND (as a clip that does not exist); the index is
written with its owner or not at all; a page token does not cross users; the search log records who searched.

And the owner-filtered nearest-neighbour search (``retrieval.PgRetrieval``, iterative HNSW scans): in one
collection of 100,000 vectors, a user who owns 100 of them (0.1 %), one who owns 1,000 (1 %) and one who owns
40,000 (40 %) each get their best match first and a full page. Latencies are printed.

Tests share the session's database, so each uses model names of its own (queries see only their model); the
100,000 vectors go into a fresh database of their own."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb
from clipmind.search.internal.v1 import search_internal_service_pb2 as internal_pb
from clipmind.search.v1 import search_service_pb2 as pb

from services.analytics.internal_servicer import AnalyticsInternalServicer
from services.analytics.search_log import SearchLogStore
from services.analytics.usage import UsageStore
from services.common.blobstore import LocalBlobStore
from services.common.config import SearchSettings
from services.common.db import Database
from services.common.errors import InvalidArgument, NotFound
from services.common.ids import derived_id
from services.common.principal import Principal
from services.inference.ports import ModelStatus, Transcript
from services.search.browse import Browser
from services.search.clip_store import NO_OWNER, ClipStore
from services.search.internal_servicer import SearchInternalServicer
from services.search.ports import ClipFilter
from services.search.records import SearchRecord
from services.search.retrieval import PgRetrieval
from services.search.search_log import to_message
from services.search.searcher import Searcher, SearchQuery
from services.search.servicer import SearchServicer
from services.search.vectors import PgVectorIndex
from tests.db_setup import ServicerStub, fresh_database, service_db

pytestmark = pytest.mark.integration

ALICE, BOB = Principal(uuid.uuid4(), "user"), Principal(uuid.uuid4(), "user")
ADMIN = Principal(uuid.uuid4(), "admin")
CANDIDATES = SearchSettings.model_fields["search_candidates"].default  # what a search asks each signal for


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class QueryVectors:
    """Inference for searches: every model ready (under this test's model names); a text query's vectors are the
    ones a test set for that text, so a query can aim at a stored clip without any model."""

    def __init__(self, tag: str) -> None:
        self.visual_model, self.transcript_model = f"clip/{tag}", f"sbert/{tag}"
        self.visual: dict[str, np.ndarray] = {}
        self.transcript: dict[str, np.ndarray] = {}

    @property
    def backend(self) -> str:
        return "test"

    async def status(self) -> dict[str, ModelStatus]:
        return {"clip_image": ModelStatus("clip_image", "ready", self.visual_model),
                "clip_text": ModelStatus("clip_text", "ready", "clip-text"),
                "sbert": ModelStatus("sbert", "ready", self.transcript_model),
                "whisper": ModelStatus("whisper", "off")}

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray | Exception]:
        return [self.visual[i.decode()] for i in images]

    async def embed_clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.visual[t] for t in texts])

    async def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.transcript[t] for t in texts])

    async def transcribe(self, audio: np.ndarray, sample_rate: int = 16000) -> Transcript:
        raise AssertionError("search never transcribes")

    async def close(self) -> None:
        return None


class Logged:
    """The search log as the searcher hands it records."""

    def __init__(self) -> None:
        self.records: list[SearchRecord] = []

    def record(self, entry: SearchRecord) -> None:
        self.records.append(entry)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    pool = await service_db(pg_dsn, "search")
    try:
        yield pool
    finally:
        await pool.close()


def _index_request(video_id: uuid.UUID, owner: Principal | None, models: QueryVectors, rng: np.random.Generator,
                   n: int = 3) -> internal_pb.ReplaceVideoIndexRequest:
    """``n`` clips of 10 s, a transcript segment and a vector of each kind per clip, as the pipeline sends them."""
    request = internal_pb.ReplaceVideoIndexRequest(
        video=f"videos/{video_id}", fence=1, owner=owner.name if owner else "",
        transcript_model=models.transcript_model, visual_model=models.visual_model)
    for i in range(n):
        clip_id = derived_id(video_id, "clip", i)
        request.clips.add(id=str(clip_id), index=i, start_seconds=i * 10.0, end_seconds=i * 10.0 + 10,
                          visual_embedding=_unit(rng, 512).tolist())
        request.segments.add(id=str(derived_id(video_id, "segment", i)), clip_id=str(clip_id), index=i,
                             start_seconds=i * 10.0 + 1, end_seconds=i * 10.0 + 4, text=f"words {i}",
                             source="SIDECAR", embedding=_unit(rng, 384).tolist())
    return request


class World:
    """Alice's and Bob's videos indexed through SearchInternalService, READY, and the public servicer."""

    def __init__(self, db: Database, tmp: Path) -> None:
        self.models = QueryVectors(uuid.uuid4().hex[:8])
        self.store = ClipStore(db)
        self.internal = ServicerStub(SearchInternalServicer(self.store))
        self.log = Logged()
        self.searcher = Searcher(self.store, PgRetrieval(db), PgVectorIndex(db), self.models,  # type: ignore[arg-type]
                                 self.log)
        self.servicer = SearchServicer(self.searcher, LocalBlobStore(tmp, "http://media.test"), Browser(self.store))
        self.videos: dict[uuid.UUID, uuid.UUID] = {}  # owner -> video
        self.requests: dict[uuid.UUID, internal_pb.ReplaceVideoIndexRequest] = {}

    async def index(self, owner: Principal, seed: int) -> None:
        video_id = uuid.uuid4()
        request = _index_request(video_id, owner, self.models, np.random.default_rng(seed))
        await self.internal.ReplaceVideoIndex(request)
        await self.internal.UpsertVideoFacts(internal_pb.UpsertVideoFactsRequest(facts=internal_pb.VideoFacts(
            video=f"videos/{video_id}", revision=1, state="READY", title=f"{owner.user_id}'s", owner=owner.name)))
        self.videos[owner.user_id], self.requests[owner.user_id] = video_id, request

    def clips(self, owner: Principal) -> set[str]:
        return {f"clips/{c.id}" for c in self.requests[owner.user_id].clips}

    def aim(self, text: str, owner: Principal, i: int) -> None:
        """Make ``text`` a query whose vectors are those of ``owner``'s clip ``i`` (its best match)."""
        request = self.requests[owner.user_id]
        self.models.visual[text] = np.asarray(request.clips[i].visual_embedding, np.float32)
        self.models.transcript[text] = np.asarray(request.segments[i].embedding, np.float32)

    def as_(self, who: Principal) -> Any:
        return ServicerStub(self.servicer, principal=who)


@pytest.fixture
async def world(db: Database, tmp_path: Path) -> World:
    w = World(db, tmp_path)
    await w.index(ALICE, 1)
    await w.index(BOB, 2)
    return w


async def test_the_index_and_its_read_model_carry_the_owner(db: Database, world: World) -> None:
    video_id = world.videos[ALICE.user_id]
    for table in ("clips", "transcript_segments", "transcript_vectors", "visual_vectors"):
        owners = await db.fetch(f"SELECT DISTINCT owner_id FROM {table} WHERE video_id = $1", video_id)
        assert [r["owner_id"] for r in owners] == [ALICE.user_id], table
    assert await db.fetchval("SELECT owner_id FROM videos WHERE id = $1", video_id) == ALICE.user_id


async def test_another_users_clip_is_not_found(world: World) -> None:
    alice_clip = sorted(world.clips(ALICE))[0]
    missing = f"clips/{uuid.uuid4()}"
    for name in (alice_clip, missing):  # the same answer: nobody learns which ids exist
        with pytest.raises(NotFound) as not_found:
            await world.as_(BOB).GetClip(pb.GetClipRequest(name=name))
        assert not_found.value.reason == "CLIP_NOT_FOUND"
        with pytest.raises(NotFound) as not_found:
            await world.as_(BOB).FindSimilarClips(pb.FindSimilarClipsRequest(name=name))
        assert not_found.value.reason == "CLIP_NOT_FOUND"
    assert (await world.as_(ALICE).GetClip(pb.GetClipRequest(name=alice_clip))).name == alice_clip
    assert (await world.as_(ADMIN).GetClip(pb.GetClipRequest(name=alice_clip))).name == alice_clip

    similar = await world.as_(ALICE).FindSimilarClips(pb.FindSimilarClipsRequest(name=alice_clip))
    assert {r.clip.name for r in similar.results} == world.clips(ALICE) - {alice_clip}
    similar = await world.as_(ADMIN).FindSimilarClips(pb.FindSimilarClipsRequest(name=alice_clip))
    assert {r.clip.name for r in similar.results} == (world.clips(ALICE) | world.clips(BOB)) - {alice_clip}


async def test_searches_find_only_the_callers_clips_and_admins_find_all(world: World) -> None:
    world.aim("alice's second scene", ALICE, 1)
    query = "alice's second scene"
    mine = await world.as_(ALICE).Search(pb.SearchRequest(min_score=-1, query=query))
    assert mine.results[0].clip.name == f"clips/{world.requests[ALICE.user_id].clips[1].id}"
    assert {r.clip.name for r in mine.results} == world.clips(ALICE)

    theirs = await world.as_(BOB).Search(pb.SearchRequest(min_score=-1, query=query))  # aimed at Alice's: Bob's
    assert {r.clip.name for r in theirs.results} == world.clips(BOB)
    alice_video = f"videos/{world.videos[ALICE.user_id]}"
    only_alices = pb.SearchFilter(videos=[alice_video])
    filtered = await world.as_(BOB).Search(pb.SearchRequest(min_score=-1, query=query, filter=only_alices))
    assert list(filtered.results) == []  # naming another user's video finds nothing

    everyone = await world.as_(ADMIN).Search(pb.SearchRequest(min_score=-1, query=query))
    assert everyone.results[0].clip.name == mine.results[0].clip.name
    assert {r.clip.name for r in everyone.results} == world.clips(ALICE) | world.clips(BOB)
    scoped = await world.as_(ADMIN).Search(pb.SearchRequest(min_score=-1, query=query, filter=only_alices))
    assert {r.clip.name for r in scoped.results} == world.clips(ALICE)

    # The search log records who searched, and analytics gets it as users/{id}.
    assert [r.user_id for r in world.log.records] == [ALICE.user_id, BOB.user_id, BOB.user_id, ADMIN.user_id,
                                                       ADMIN.user_id]
    assert [s.user for s in to_message(world.log.records[:2]).searches] == [ALICE.name, BOB.name]


async def test_browsing_a_video_lists_its_clips_and_transcript_in_pages_for_its_owner_only(world: World) -> None:
    video = f"videos/{world.videos[ALICE.user_id]}"
    request = world.requests[ALICE.user_id]
    clips, token = [], ""
    while True:  # two pages of at most 2
        page = await world.as_(ALICE).ListClips(pb.ListClipsRequest(parent=video, page_size=2, page_token=token))
        clips += page.clips
        token = page.next_page_token
        if not token:
            break
    assert [c.name for c in clips] == [f"clips/{c.id}" for c in request.clips]  # in play order, none twice
    assert [c.start_seconds for c in clips] == [0.0, 10.0, 20.0] and {c.video for c in clips} == {video}
    cues = await world.as_(ALICE).ListTranscriptSegments(pb.ListTranscriptSegmentsRequest(parent=video))
    assert [(c.text, c.start_seconds, c.clip) for c in cues.transcript_segments] == [
        (s.text, s.start_seconds, f"clips/{s.clip_id}") for s in request.segments]
    assert cues.transcript_segments[1].name == f"{video}/transcriptSegments/1" and not cues.next_page_token
    assert len((await world.as_(ADMIN).ListClips(pb.ListClipsRequest(parent=video))).clips) == 3

    for name in (video, f"videos/{uuid.uuid4()}"):  # another user's video is not there, as a missing one
        for call in (world.as_(BOB).ListClips(pb.ListClipsRequest(parent=name)),
                     world.as_(BOB).ListTranscriptSegments(pb.ListTranscriptSegmentsRequest(parent=name))):
            with pytest.raises(NotFound) as missing:
                await call
            assert missing.value.reason == "VIDEO_NOT_FOUND"
    first = await world.as_(ALICE).ListClips(pb.ListClipsRequest(parent=video, page_size=1))
    with pytest.raises(InvalidArgument):  # a token is the caller's
        await world.as_(ADMIN).ListClips(pb.ListClipsRequest(parent=video, page_token=first.next_page_token))
    with pytest.raises(InvalidArgument):
        await world.as_(ALICE).ListClips(pb.ListClipsRequest(parent=video, page_size=-1))


async def test_a_page_token_does_not_cross_users(world: World) -> None:
    world.aim("first scene", ALICE, 0)
    first = await world.as_(ALICE).Search(pb.SearchRequest(min_score=-1, query="first scene", page_size=1))
    assert first.next_page_token
    second = await world.as_(ALICE).Search(pb.SearchRequest(min_score=-1, query="first scene", page_size=1,
                                                            page_token=first.next_page_token))
    assert second.results[0].clip.name != first.results[0].clip.name
    for who in (BOB, ADMIN):
        with pytest.raises(InvalidArgument) as refused:
            await world.as_(who).Search(pb.SearchRequest(min_score=-1, query="first scene", page_size=1,
                                                         page_token=first.next_page_token))
        assert refused.value.reason == "PAGE_TOKEN_MISMATCH"
        assert [v.field for v in refused.value.field_violations] == ["page_token"]

    clip = sorted(world.clips(ALICE))[0]
    similar = await world.as_(ALICE).FindSimilarClips(pb.FindSimilarClipsRequest(name=clip, page_size=1))
    assert similar.next_page_token
    with pytest.raises(InvalidArgument) as refused:
        await world.as_(ADMIN).FindSimilarClips(pb.FindSimilarClipsRequest(name=clip, page_size=1,
                                                                           page_token=similar.next_page_token))
    assert refused.value.reason == "PAGE_TOKEN_MISMATCH"


@pytest.mark.parametrize(("owner", "reason"), [("", "REQUIRED_FIELD"), ("users/nobody", "INVALID_NAME"),
                                               (f"videos/{uuid.uuid4()}", "INVALID_NAME")])
async def test_an_index_without_an_owner_is_refused(db: Database, tmp_path: Path, owner: str, reason: str) -> None:
    world, video_id = World(db, tmp_path), uuid.uuid4()
    request = _index_request(video_id, None, world.models, np.random.default_rng(3))
    request.owner = owner
    with pytest.raises(InvalidArgument) as refused:
        await world.internal.ReplaceVideoIndex(request)
    assert (refused.value.reason, [v.field for v in refused.value.field_violations]) == (reason, ["owner"])
    assert await db.fetchval("SELECT count(*) FROM clips WHERE video_id = $1", video_id) == 0
    assert await db.fetchval("SELECT count(*) FROM videos WHERE id = $1", video_id) == 0


async def test_facts_keep_their_owner_when_a_later_one_has_none(db: Database) -> None:
    stub, video_id = ServicerStub(SearchInternalServicer(ClipStore(db))), uuid.uuid4()

    async def upsert(revision: int, owner: str) -> bool:
        request = internal_pb.UpsertVideoFactsRequest(facts=internal_pb.VideoFacts(
            video=f"videos/{video_id}", revision=revision, state="READY", owner=owner))
        return bool((await stub.UpsertVideoFacts(request)).applied)

    assert await upsert(1, "")  # an ingest from before ownership: nobody's until its owner is known
    assert await db.fetchval("SELECT owner_id FROM videos WHERE id = $1", video_id) == NO_OWNER
    assert await upsert(2, ALICE.name)
    assert await upsert(3, "")  # a late message without an owner does not clear it
    assert await db.fetchval("SELECT owner_id FROM videos WHERE id = $1", video_id) == ALICE.user_id
    with pytest.raises(InvalidArgument) as refused:
        await upsert(4, "alice")
    assert [v.field for v in refused.value.field_violations] == ["facts.owner"]


async def test_analytics_stores_who_searched(pg_dsn: str) -> None:
    db = await service_db(pg_dsn, "analytics")
    try:
        stub = ServicerStub(AnalyticsInternalServicer(SearchLogStore(db), UsageStore(db)))
        ids = [uuid.uuid4() for _ in range(3)]
        request = analytics_pb.LogSearchesRequest()
        for search_id, user in zip(ids, (ALICE.name, BOB.name, ""), strict=True):  # "": logged before users
            item = request.searches.add(search_id=str(search_id), query="q", result_count=0, user=user)
            item.search_time.FromDatetime(datetime.now(UTC))
        assert (await stub.LogSearches(request)).logged_count == 3
        rows = {r["id"]: r["user_id"] for r in await db.fetch("SELECT id, user_id FROM searches WHERE id = ANY($1)",
                                                                ids)}
        assert rows == {ids[0]: ALICE.user_id, ids[1]: BOB.user_id, ids[2]: uuid.UUID(int=0)}

        bad = analytics_pb.LogSearchesRequest()
        item = bad.searches.add(search_id=str(uuid.uuid4()), query="q", user="bob")
        item.search_time.FromDatetime(datetime.now(UTC))
        with pytest.raises(InvalidArgument) as refused:
            await stub.LogSearches(bad)
        assert [v.field for v in refused.value.field_violations] == ["searches[0].user"]
    finally:
        await db.close()


# --- 100,000 vectors: filtered nearest neighbours without iterative index scans --------------------------------

N_VECTORS, CLIPS_PER_VIDEO, DIMS = 100_000, 100, 512
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
SHARES = {"0.1 %": 100, "1 %": 1_000, "40 %": 40_000}  # clips owned by one user each; the rest by 50 others


async def load_collection(db: Database, model: str, owners: dict[str, int], *, seed: int = 7,
                          n: int = N_VECTORS) -> tuple[dict[str, uuid.UUID], dict[uuid.UUID, np.ndarray]]:
    """``n`` clips in READY videos of ``CLIPS_PER_VIDEO``, each with a unit visual vector of ``model``;
    ``owners`` name users and how many clips each owns (whole videos), the rest belong to 50 other users.
    Loaded by COPY with the HNSW index dropped, then the index is built as migration 0001 builds it (a bulk
    build is far faster than 100,000 inserts into the graph). Returns the users' ids, and every vector by clip."""
    rng = np.random.default_rng(seed)
    users = {name: uuid.uuid4() for name in owners}
    others = [uuid.uuid4() for _ in range(50)]
    video_owners: list[uuid.UUID] = []
    for name, count in owners.items():
        video_owners += [users[name]] * (count // CLIPS_PER_VIDEO)
    video_owners += [others[i % len(others)] for i in range(n // CLIPS_PER_VIDEO - len(video_owners))]
    rng.shuffle(video_owners)  # type: ignore[arg-type]
    # Scenes of one video look alike: each clip is its video's centroid plus noise as large (cosine ~0.5 to the
    # video's other clips, ~0 to other videos'), so a query near a clip has well-defined neighbours.
    centroids = rng.standard_normal((n // CLIPS_PER_VIDEO, DIMS), dtype=np.float32) / np.sqrt(DIMS)
    vectors = np.repeat(centroids, CLIPS_PER_VIDEO, axis=0)
    vectors += rng.standard_normal((n, DIMS), dtype=np.float32) / np.sqrt(DIMS)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    videos, clips, frames, rows, by_clip = [], [], [], [], {}
    for v, owner in enumerate(video_owners):
        video_id = uuid.uuid4()
        videos.append((video_id, owner, 1, "READY", 1000.0, f"video {v}"))
        for i in range(CLIPS_PER_VIDEO):
            clip_id, k = uuid.uuid4(), v * CLIPS_PER_VIDEO + i
            clips.append((clip_id, video_id, owner, i, i * 10.0, i * 10.0 + 10))
            frames.append((clip_id, video_id, owner, clip_id, 0, i * 10.0 + 5, i * 10.0, i * 10.0 + 10))
            rows.append((clip_id, video_id, owner, model, vectors[k], clip_id))
            by_clip[clip_id] = vectors[k]
    async with db.acquire() as conn:
        await conn.execute("DROP INDEX IF EXISTS visual_vectors_hnsw")
        await conn.copy_records_to_table("videos", records=videos, columns=[
            "id", "owner_id", "revision", "state", "duration_s", "title"])
        await conn.copy_records_to_table("clips", records=clips, columns=[
            "id", "video_id", "owner_id", "idx", "start_s", "end_s"])
        await conn.copy_records_to_table("keyframes", records=frames, columns=[
            "id", "video_id", "owner_id", "clip_id", "idx", "time_s", "start_s", "end_s"])
        await conn.copy_records_to_table("visual_vectors", records=rows, columns=[
            "id", "video_id", "owner_id", "model", "embedding", "clip_id"])
        await conn.execute("SET maintenance_work_mem = '1GB'")  # the graph fits in memory: an in-memory build
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        await conn.execute("CREATE INDEX visual_vectors_hnsw ON visual_vectors "
                           "USING hnsw (embedding vector_cosine_ops)", timeout=600)  # ~40 s on 2 cores
        # statistics, visibility
        await conn.execute("VACUUM ANALYZE videos, clips, keyframes, visual_vectors", timeout=600)
    return users, by_clip


def _p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


@pytest.mark.chaos  # slow: 100,000 vectors loaded and indexed, ~60 s on 2 cores
async def test_small_owners_find_their_best_match_among_100000_vectors(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fresh_database(pg_dsn) as dsn:
        db = await service_db(dsn, "search")
        try:
            started = time.perf_counter()
            models = QueryVectors("bulk")
            users, vectors = await load_collection(db, models.visual_model, SHARES)
            load_s = time.perf_counter() - started
            owner_of = {r["id"]: r["owner_id"] for r in await db.fetch("SELECT id, owner_id FROM clips")}
            rng = np.random.default_rng(11)
            report = [f"\n100,000 visual vectors indexed in {load_s:.1f} s; p50 of 10 queries, "
                      f"{CANDIDATES} candidates:"]

            async def check(index: PgRetrieval, user: uuid.UUID, label: str) -> None:
                """Ten queries near ten of ``user``'s clips, each asking the candidates a search asks for: the
                page (the first 10) is full and theirs, that clip is first on it and the page recalls ≥ 0.8 of the
                exact top 10; the latency goes into the report. HNSW is approximate (the planner serves a large
                owner through it, a small one exactly through the btree index): one query in ten may miss. On this
                collection about 1 query in 150 misses entirely at the deployed ``hnsw.ef_search`` of 100
                (measured on a large owner's 300 queries: 298 found first, mean recall 0.992; at 200: 299,
                0.995, 16 ms p50 against 10), so a test allowing no miss failed about one run in fifteen."""
                theirs = [c for c, o in owner_of.items() if o == user]
                matrix = np.stack([vectors[c] for c in theirs])
                times, misses = [], []
                for target in rng.choice(len(theirs), 10, replace=False):
                    query = matrix[target] + 0.05 * _unit(rng, DIMS)  # near the clip, not equal to it
                    t0 = time.perf_counter()
                    hits = (await index.visual(models.visual_model, query, CANDIDATES, ClipFilter(user)))[:10]
                    times.append(time.perf_counter() - t0)
                    assert len(hits) == 10 and {owner_of[h.clip_id] for h in hits} == {user}, label
                    exact = [theirs[i] for i in np.argsort(-(matrix @ query))[:10]]
                    recall = len({h.clip_id for h in hits} & set(exact)) / 10
                    if hits[0].clip_id != theirs[target] or recall < 0.8:
                        misses.append(recall)
                assert len(misses) <= 1, (label, misses)
                paths = ", ".join(f"{k} {v}" for k, v in sorted(index.path_counts.items()))
                report.append(f"  {label:<46} p50 {_p50_ms(times):6.1f} ms  ({paths})")
                index.path_counts.clear()

            retrieval = PgRetrieval(db)  # as deployed: the planner chooses, iterative scans keep pages full
            for name, count in SHARES.items():
                await check(retrieval, users[name], f"{name} ({count:,} vectors)")

            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                assert len(await retrieval.visual(models.visual_model, _unit(rng, DIMS), 10, ClipFilter(None))) == 10
                times.append(time.perf_counter() - t0)
            report.append(f"  {'admin (no owner filter)':<46} p50 {_p50_ms(times):6.1f} ms")

            # Filters (issue 10): one video, an upload-date window (10 of 1,000 videos) and a clip-duration window
            # (~5 % of the clips) each give a full page of the right clips, checked against exact ranking, at the
            # number of candidates a search asks for (its page is the top 10 of them).
            await db.execute("UPDATE videos SET create_time = $1::timestamptz + n.i * interval '1 day' FROM "
                             "(SELECT id, row_number() OVER (ORDER BY id) - 1 AS i FROM videos) n "
                             "WHERE n.id = videos.id", EPOCH)
            await db.execute("UPDATE clips SET end_s = start_s + 1 + (abs(hashtext(id::text)) % 20)")
            await db.execute("ANALYZE videos, clips")
            exact = PgRetrieval(db, exact=True)
            some_video = await db.fetchval("SELECT video_id FROM clips LIMIT 1")
            filters = {
                "one video": ClipFilter(None, (some_video,)),
                "date window": ClipFilter(None, created_after=EPOCH + timedelta(days=500),
                                          created_before=EPOCH + timedelta(days=510)),
                "clip duration 5 s": ClipFilter(None, min_duration_s=5, max_duration_s=5),
                "0.1 % owner, duration 1-10 s": ClipFilter(users["0.1 %"], min_duration_s=1, max_duration_s=10),
            }
            everyone = list(vectors)
            for label, where in filters.items():
                times = []
                for target in rng.choice(len(everyone), 5, replace=False):
                    query = vectors[everyone[target]] + 0.05 * _unit(rng, DIMS)
                    t0 = time.perf_counter()
                    found = await retrieval.visual(models.visual_model, query, CANDIDATES, where)
                    times.append(time.perf_counter() - t0)
                    truth = await exact.visual(models.visual_model, query, CANDIDATES, where)
                    assert truth and len(found) == len(truth), label  # no starvation
                    page = {m.clip_id for m in truth[:10]}
                    assert len({m.clip_id for m in found[:10]} & page) >= 0.9 * len(page), label
                name = f"filter: {label} ({CANDIDATES} candidates)"
                report.append(f"  {name:<46} p50 {_p50_ms(times):6.1f} ms")

            # Through the whole search: the smallest owner's best clip comes first, on a full page of theirs.
            searcher = Searcher(ClipStore(db), PgRetrieval(db), PgVectorIndex(db), models,  # type: ignore[arg-type]
                                Logged())
            small = users["0.1 %"]
            target = next(c for c, o in owner_of.items() if o == small)
            models.visual["that scene"] = vectors[target]
            models.transcript["that scene"] = _unit(rng, 384)  # no transcript vectors of this model: visual only
            caller = Principal(small, "user")
            page = await searcher.search(SearchQuery(text="that scene", min_score=-1.0), caller)
            assert page.hits[0].clip.id == target and len(page.hits) == 10
            assert {owner_of[h.clip.id] for h in page.hits} == {small}
            with capsys.disabled():
                print("\n".join(report))
        finally:
            await db.close()

