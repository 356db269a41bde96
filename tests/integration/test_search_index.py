"""The search service's index in its own schema (real PostgreSQL + pgvector): index writes are fenced, a video
is searchable only once ingest's facts say READY, facts apply in revision order, a deleted video stays deleted,
and SearchInternalService checks what it is sent. The database is shared by the session: every test uses
fresh video ids (and model names where it counts rows across videos)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from clipmind.search.internal.v1 import search_internal_service_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.db import Database
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.ids import derived_id
from services.search.clip_store import ClipStore
from services.search.internal_servicer import SearchInternalServicer
from services.search.ports import ClipFilter
from services.search.records import Clip, Segment, VideoFacts, VideoIndex
from services.search.retrieval import PgRetrieval
from tests.db_setup import ServicerStub, service_db

pytestmark = pytest.mark.integration

_TABLES = ("clips", "transcript_segments", "transcript_vectors", "visual_vectors")
OWNER = uuid.uuid4()  # the user who owns these tests' videos (ownership itself: test_search_ownership.py)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    pool = await service_db(pg_dsn, "search")
    try:
        yield pool
    finally:
        await pool.close()


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _index(video_id: uuid.UUID, n: int = 3, *, transcript_model: str = "sbert/test",
           visual_model: str = "clip/test", seed: int = 0) -> VideoIndex:
    """``n`` clips of 10 s with one transcript segment each, and a vector of each kind."""
    rng = np.random.default_rng(seed)
    clips = [Clip(derived_id(video_id, "clip", i), video_id, i, i * 10.0, i * 10.0 + 10.0, f"k/{i}.jpg")
             for i in range(n)]
    segments = [Segment(derived_id(video_id, "segment", i), video_id, clips[i].id, i, i * 10.0 + 1,
                        i * 10.0 + 4, f"line {i} seed {seed}", "SIDECAR") for i in range(n)]
    return VideoIndex(clips, segments, vectors=[(s.id, _unit(rng, 384)) for s in segments],
                      transcript_model=transcript_model,
                      visual_vectors=[(c.id, _unit(rng, 512)) for c in clips], visual_model=visual_model)


def _facts(video_id: uuid.UUID, revision: int, state: str = "READY", *, title: str = "a title",
           duration_s: float = 30.0, create_time: datetime | None = None) -> VideoFacts:
    return VideoFacts(video_id, revision, title, f"videos/{video_id}/source.mp4", state, duration_s, create_time)


def _facts_pb(video_id: uuid.UUID, revision: int, state: str = "READY", **fields: Any) -> pb.VideoFacts:
    return pb.VideoFacts(video=f"videos/{video_id}", revision=revision, state=state,
                         blob_key=f"videos/{video_id}/source.mp4", **fields)


async def _counts(db: Database, video_id: uuid.UUID) -> tuple[int, ...]:
    return tuple([await db.fetchval(f"SELECT count(*) FROM {t} WHERE video_id = $1", video_id) for t in _TABLES])


async def test_an_older_fence_is_refused_and_writes_nothing(db: Database) -> None:
    store, video_id = ClipStore(db), uuid.uuid4()
    newer = _index(video_id, 3, seed=1)
    await store.replace_index(video_id, 5, newer, owner=OWNER)
    before = await db.fetch("SELECT id, start_s, end_s FROM clips WHERE video_id = $1 ORDER BY idx", video_id)
    texts = await db.fetch("SELECT text FROM transcript_segments WHERE video_id = $1 ORDER BY idx", video_id)

    for fence in (4, 0):  # a run that was superseded, however late its write comes
        with pytest.raises(FailedPrecondition) as refused:
            await store.replace_index(video_id, fence, _index(video_id, 2, seed=2), owner=OWNER)
        assert refused.value.reason == "RUN_SUPERSEDED"
        with pytest.raises(FailedPrecondition):
            await store.replace_index(video_id, fence, VideoIndex([], []), owner=OWNER)  # not even an empty one

    assert await _counts(db, video_id) == (3, 3, 3, 3)
    assert await db.fetch("SELECT id, start_s, end_s FROM clips WHERE video_id = $1 ORDER BY idx",
                          video_id) == before
    assert await db.fetch("SELECT text FROM transcript_segments WHERE video_id = $1 ORDER BY idx",
                          video_id) == texts
    assert await db.fetchval("SELECT index_fence FROM videos WHERE id = $1", video_id) == 5

    await store.replace_index(video_id, 5, newer, owner=OWNER)  # the same run again: the same rows
    assert await _counts(db, video_id) == (3, 3, 3, 3)
    await store.replace_index(video_id, 6, _index(video_id, 2, seed=3), owner=OWNER)  # a newer run replaces it all
    assert await _counts(db, video_id) == (2, 2, 2, 2)
    assert await db.fetchval("SELECT index_fence FROM videos WHERE id = $1", video_id) == 6


async def test_the_servicer_writes_the_index_fenced(db: Database) -> None:
    stub, video_id = ServicerStub(SearchInternalServicer(ClipStore(db))), uuid.uuid4()
    index = _index(video_id, 2)
    request = pb.ReplaceVideoIndexRequest(
        video=f"videos/{video_id}", owner=f"users/{OWNER}", fence=3, transcript_model=index.transcript_model,
        visual_model=index.visual_model,
        clips=[pb.IndexedClip(id=str(c.id), index=c.idx, start_seconds=c.start_s, end_seconds=c.end_s,
                              thumbnail_key=c.thumbnail_key, visual_embedding=v.tolist())
               for c, (_, v) in zip(index.clips, index.visual_vectors, strict=True)],
        segments=[pb.IndexedSegment(id=str(g.id), clip_id=str(g.clip_id), index=g.idx, start_seconds=g.start_s,
                                    end_seconds=g.end_s, text=g.text, source=g.source, embedding=v.tolist())
                  for g, (_, v) in zip(index.segments, index.vectors, strict=True)],
    )
    answer = await stub.ReplaceVideoIndex(request)
    assert (answer.clip_count, answer.segment_count, answer.vector_count) == (2, 2, 4)
    assert await _counts(db, video_id) == (2, 2, 2, 2)
    request.fence = 2
    with pytest.raises(FailedPrecondition) as refused:
        await stub.ReplaceVideoIndex(request)
    assert refused.value.reason == "RUN_SUPERSEDED"
    assert (await stub.DeleteVideoIndex(pb.DeleteVideoIndexRequest(video=f"videos/{video_id}"))).deleted_clip_count == 2
    request.fence = 4
    with pytest.raises(NotFound) as gone:
        await stub.ReplaceVideoIndex(request)
    assert gone.value.reason == "VIDEO_NOT_FOUND"
    assert await _counts(db, video_id) == (0, 0, 0, 0)


def _finder(db: Database, index: VideoIndex) -> Any:
    """The clips of ``index``'s video that a search of OWNER's with these filters retrieves (each signal), as
    {clip id: clip} with what results show (the catalog's read)."""
    store, retrieval = ClipStore(db), PgRetrieval(db)
    video_id = index.clips[0].video_id
    query = index.visual_vectors[0][1]

    async def find(clip_ids: list[uuid.UUID], **filters: Any) -> dict[uuid.UUID, Clip]:
        where = ClipFilter(OWNER, (video_id,), **filters)
        visual = {m.clip_id for m in await retrieval.visual(index.visual_model, query, 10, where)}
        transcript = {m.clip_id for m in await retrieval.transcript(index.transcript_model, index.vectors[0][1], 10,
                                                                     where)}
        lexical = {m.clip_id for m in await retrieval.lexical("line seed", 10, where)}
        assert visual == transcript == lexical, "every signal applies the same filters"
        found = await store.get_many(clip_ids, owner=OWNER)
        assert visual <= set(found), "the catalog shows what retrieval finds"
        if not filters:
            assert set(found) == visual, "the catalog shows READY videos' clips only"
        return {c: found[c] for c in visual}

    return find


async def test_an_index_is_not_searchable_before_its_facts_say_ready(db: Database) -> None:
    store, video_id = ClipStore(db), uuid.uuid4()
    stub = ServicerStub(SearchInternalServicer(store))
    index = _index(video_id, 3)
    clip_ids = [c.id for c in index.clips]
    find = _finder(db, index)
    await store.replace_index(video_id, 1, index, owner=OWNER)  # the index may arrive before any facts
    assert await find(clip_ids) == {}

    assert await store.upsert_facts(_facts(video_id, 1, "PROCESSING"))
    assert await find(clip_ids) == {}

    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    stamp = Timestamp()
    stamp.FromDatetime(created)
    answer = await stub.UpsertVideoFacts(pb.UpsertVideoFactsRequest(facts=_facts_pb(
        video_id, 2, "READY", title="Sunset", duration_seconds=30.0, create_time=stamp)))
    assert answer.applied
    found = await find(clip_ids)
    assert set(found) == set(clip_ids)
    clip = found[clip_ids[1]]
    assert (clip.video_id, clip.idx, clip.start_s, clip.end_s) == (video_id, 1, 10.0, 20.0)
    assert clip.thumbnail_key == "k/1.jpg"
    assert (clip.video_title, clip.video_blob_key) == ("Sunset", f"videos/{video_id}/source.mp4")
    assert clip.transcript == "line 1 seed 0"
    assert (await store.get(clip_ids[0], owner=OWNER)).video_title == "Sunset"

    # Durations are the clips' own (10 s each; the video is 30 s); times are the video's upload.
    assert set(await find(clip_ids, min_duration_s=5, max_duration_s=15)) == set(clip_ids)
    assert await find(clip_ids, min_duration_s=11) == {}
    assert await find(clip_ids, max_duration_s=9) == {}
    assert set(await find(clip_ids, created_after=created)) == set(clip_ids)
    assert await find(clip_ids, created_after=created + timedelta(seconds=1)) == {}
    assert await find(clip_ids, created_before=created) == {}
    assert set(await find(clip_ids, created_before=created + timedelta(days=1))) == set(clip_ids)

    assert await store.upsert_facts(_facts(video_id, 3, "FAILED"))  # reprocessing failed: out of search again
    assert await find(clip_ids) == {}


async def test_facts_apply_in_revision_order(db: Database) -> None:
    store, video_id = ClipStore(db), uuid.uuid4()
    stub = ServicerStub(SearchInternalServicer(store))
    assert await store.upsert_facts(_facts(video_id, 2, title="second"))
    assert not await store.upsert_facts(_facts(video_id, 1, title="first"))  # late: ignored
    assert not await store.upsert_facts(_facts(video_id, 2, title="again"))  # repeated: ignored
    late = await stub.UpsertVideoFacts(pb.UpsertVideoFactsRequest(facts=_facts_pb(video_id, 1, title="first")))
    assert late.applied is False
    row = await db.fetchrow("SELECT revision, title, state FROM videos WHERE id = $1", video_id)
    assert tuple(row or ()) == (2, "second", "READY")

    assert (await stub.UpsertVideoFacts(pb.UpsertVideoFactsRequest(
        facts=_facts_pb(video_id, 3, "PROCESSING", title="third")))).applied
    row = await db.fetchrow("SELECT revision, title, state FROM videos WHERE id = $1", video_id)
    assert tuple(row or ()) == (3, "third", "PROCESSING")

    # Facts that arrive after an index keep its fence (one row holds both).
    await store.replace_index(video_id, 7, _index(video_id, 1), owner=OWNER)
    assert await store.upsert_facts(_facts(video_id, 4))
    assert await db.fetchval("SELECT index_fence FROM videos WHERE id = $1", video_id) == 7


async def test_a_deleted_video_stays_deleted(db: Database) -> None:
    store, video_id = ClipStore(db), uuid.uuid4()
    index = _index(video_id, 3)
    find = _finder(db, index)
    await store.replace_index(video_id, 1, index, owner=OWNER)
    assert await store.upsert_facts(_facts(video_id, 1))
    assert len(await find([c.id for c in index.clips])) == 3

    assert await store.delete_index(video_id) == 3
    assert await _counts(db, video_id) == (0, 0, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM transcript_segments WHERE clip_id = ANY($1::uuid[])",
                             [c.id for c in index.clips]) == 0
    row = await db.fetchrow("SELECT deleted, state FROM videos WHERE id = $1", video_id)
    assert tuple(row or ()) == (True, "DELETED")  # the tombstone
    assert await find([c.id for c in index.clips]) == {}
    with pytest.raises(NotFound) as missing:
        await store.get(index.clips[0].id, owner=OWNER)
    assert missing.value.reason == "CLIP_NOT_FOUND"

    with pytest.raises(NotFound) as gone:  # a run still going when the video was deleted writes nothing
        await store.replace_index(video_id, 2, index, owner=OWNER)
    assert gone.value.reason == "VIDEO_NOT_FOUND"
    assert not await store.upsert_facts(_facts(video_id, 99))  # nor does a late facts update bring it back
    assert await _counts(db, video_id) == (0, 0, 0, 0)
    row = await db.fetchrow("SELECT deleted, state, revision FROM videos WHERE id = $1", video_id)
    assert tuple(row or ()) == (True, "DELETED", 1)
    assert await store.delete_index(video_id) == 0  # idempotent

    never_indexed = uuid.uuid4()  # a deletion that overtakes the index write
    assert await store.delete_index(never_indexed) == 0
    with pytest.raises(NotFound):
        await store.replace_index(never_indexed, 1, _index(never_indexed, 1), owner=OWNER)
    assert await _counts(db, never_indexed) == (0, 0, 0, 0)
    assert not await store.upsert_facts(_facts(never_indexed, 1))


async def test_stale_models_counts_videos_per_other_model(db: Database) -> None:
    store, tag = ClipStore(db), uuid.uuid4().hex[:8]  # model names of this test only: other tests share the table
    old_t, new_t, old_v, new_v = (f"sbert/{tag}-old", f"sbert/{tag}-new", f"clip/{tag}-old", f"clip/{tag}-new")
    videos = [uuid.uuid4() for _ in range(4)]
    replace = functools.partial(store.replace_index, owner=OWNER)
    await replace(videos[0], 1, _index(videos[0], 2, transcript_model=old_t, visual_model=old_v))
    await replace(videos[1], 1, _index(videos[1], 3, transcript_model=old_t, visual_model=new_v))
    await replace(videos[2], 1, _index(videos[2], 1, transcript_model=new_t, visual_model=old_v))
    await replace(videos[3], 1, _index(videos[3], 2, transcript_model=new_t, visual_model=new_v))

    def mine(counts: dict[str, int]) -> dict[str, int]:
        return {k: n for k, n in counts.items() if tag in k}

    assert mine(await store.stale_models(new_t, new_v)) == {f"transcript:{old_t}": 2, f"visual:{old_v}": 2}
    assert mine(await store.stale_models(old_t, old_v)) == {f"transcript:{new_t}": 2, f"visual:{new_v}": 2}
    await replace(videos[0], 2, _index(videos[0], 2, transcript_model=new_t, visual_model=new_v))
    await store.delete_index(videos[2])  # a deleted video needs no reindex
    assert mine(await store.stale_models(new_t, new_v)) == {f"transcript:{old_t}": 1}


@pytest.mark.parametrize(("request_", "field", "reason"), [
    (pb.UpsertVideoFactsRequest(), "facts", "REQUIRED_FIELD"),
    (pb.UpsertVideoFactsRequest(facts=pb.VideoFacts(revision=1, state="READY")), "facts.video", "REQUIRED_FIELD"),
    (pb.UpsertVideoFactsRequest(facts=pb.VideoFacts(video="clips/" + str(uuid.uuid4()), revision=1, state="READY")),
     "facts.video", "INVALID_NAME"),
    (pb.UpsertVideoFactsRequest(facts=pb.VideoFacts(video="videos/not-a-uuid", revision=1, state="READY")),
     "facts.video", "INVALID_NAME"),
    (pb.UpsertVideoFactsRequest(facts=_facts_pb(uuid.uuid4(), 0)), "facts.revision", "INVALID_FIELD"),
    (pb.UpsertVideoFactsRequest(facts=_facts_pb(uuid.uuid4(), -1)), "facts.revision", "INVALID_FIELD"),
    (pb.UpsertVideoFactsRequest(facts=_facts_pb(uuid.uuid4(), 1, "DELETED")), "facts.state", "INVALID_FIELD"),
    (pb.UpsertVideoFactsRequest(facts=_facts_pb(uuid.uuid4(), 1, "")), "facts.state", "INVALID_FIELD"),
    (pb.UpsertVideoFactsRequest(facts=_facts_pb(uuid.uuid4(), 1, duration_seconds=-1.0)),
     "facts.duration_seconds", "INVALID_FIELD"),
    (pb.UpsertVideoFactsRequest(facts=_facts_pb(uuid.uuid4(), 1, title="x" * 10_001)), "facts.title", "INVALID_FIELD"),
], ids=["no-facts", "no-name", "other-collection", "not-a-uuid", "revision-0", "revision-negative",
        "state-deleted", "state-empty", "negative-duration", "title-too-long"])
async def test_bad_facts_are_refused_naming_the_field(
    db: Database, request_: pb.UpsertVideoFactsRequest, field: str, reason: str
) -> None:
    stub = ServicerStub(SearchInternalServicer(ClipStore(db)))
    with pytest.raises(InvalidArgument) as refused:
        await stub.UpsertVideoFacts(request_)
    assert refused.value.reason == reason
    assert [v.field for v in refused.value.field_violations] == [field]
    if request_.facts.video.startswith("videos/") and len(request_.facts.video) == len("videos/") + 36:
        video_id = uuid.UUID(request_.facts.video.removeprefix("videos/"))
        assert await db.fetchval("SELECT count(*) FROM videos WHERE id = $1", video_id) == 0  # nothing written


async def test_a_clip_matches_by_its_best_keyframe_and_shows_that_frame(db: Database) -> None:
    """A 20 s scene with five keyframes (4 s each) and a 10 s scene with one: a query near the first scene's last
    frame finds that scene once (not once per frame), scored by that frame, with its stretch and image as the
    moment; a similar-clips search starts from the mean of the scene's frames. A later run with fewer frames
    replaces them all, and deleting the video deletes them."""
    store, retrieval = ClipStore(db), PgRetrieval(db)
    stub = ServicerStub(SearchInternalServicer(store))
    video_id, rng, model = uuid.uuid4(), np.random.default_rng(5), f"clip/frames-{uuid.uuid4()}"
    scenes = [(0.0, 20.0, 5), (20.0, 30.0, 1)]
    vectors = {}
    request = pb.ReplaceVideoIndexRequest(video=f"videos/{video_id}", owner=f"users/{OWNER}", fence=1,
                                          visual_model=model)
    for i, (start, end, frames) in enumerate(scenes):
        clip = request.clips.add(id=str(derived_id(video_id, "clip", i)), index=i, start_seconds=start,
                                 end_seconds=end, thumbnail_key=f"k/{i}-middle.jpg")
        step = (end - start) / frames
        for n in range(frames):
            frame_id = uuid.uuid5(video_id, f"frame/{i}/{n}")
            vectors[frame_id] = _unit(rng, 512)
            clip.keyframes.add(id=str(frame_id), index=n, time_seconds=start + (n + 0.5) * step,
                               start_seconds=start + n * step, end_seconds=start + (n + 1) * step,
                               thumbnail_key=f"k/{i}-{n:02d}.jpg", visual_embedding=vectors[frame_id].tolist())
    answer = await stub.ReplaceVideoIndex(request)
    assert (answer.clip_count, answer.vector_count) == (2, 6)
    assert await store.upsert_facts(_facts(video_id, 1))
    last = uuid.uuid5(video_id, "frame/0/4")
    query = vectors[last] + 0.1 * _unit(rng, 512)
    found = await retrieval.visual(model, query / np.linalg.norm(query), 10, ClipFilter(OWNER, (video_id,)))
    assert [m.clip_id for m in found] == [derived_id(video_id, "clip", 0), derived_id(video_id, "clip", 1)]
    best = found[0]
    assert (best.start_s, best.end_s, best.thumbnail_key) == (16.0, 20.0, "k/0-04.jpg")
    assert best.score == pytest.approx(float(vectors[last] @ query / np.linalg.norm(query)), abs=1e-5)

    model_of, mean = await store._vectors.clip_visual(derived_id(video_id, "clip", 0)) or ("", None)
    expected = np.mean([vectors[uuid.uuid5(video_id, f"frame/0/{n}")] for n in range(5)], axis=0)
    assert model_of == model
    np.testing.assert_allclose(mean, expected / np.linalg.norm(expected), atol=1e-5)

    del request.clips[0].keyframes[1:]  # a later run: one frame for the whole first scene
    request.clips[0].keyframes[0].end_seconds = 20.0
    request.fence = 2
    await stub.ReplaceVideoIndex(request)
    assert await db.fetchval("SELECT count(*) FROM keyframes WHERE video_id = $1", video_id) == 2
    assert await db.fetchval("SELECT count(*) FROM visual_vectors WHERE video_id = $1", video_id) == 2
    found = await retrieval.visual(model, query / np.linalg.norm(query), 10, ClipFilter(OWNER, (video_id,)))
    assert {(m.start_s, m.end_s) for m in found} == {(0.0, 20.0), (20.0, 30.0)}
    await stub.DeleteVideoIndex(pb.DeleteVideoIndexRequest(video=f"videos/{video_id}"))
    assert await db.fetchval("SELECT count(*) FROM keyframes WHERE video_id = $1", video_id) == 0
    assert await db.fetchval("SELECT count(*) FROM visual_vectors WHERE video_id = $1", video_id) == 0
