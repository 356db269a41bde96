"""Re-running a job's index step leaves the same rows and vectors, never duplicates; an older run's index
never replaces a newer one's; deleting a video's index removes everything it owns and keeps it deleted (the
search service's schema, real PostgreSQL + pgvector)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from services.common.db import Database
from services.common.errors import FailedPrecondition, NotFound
from services.common.ids import derived_id
from services.search.clip_store import ClipStore
from services.search.ports import ClipFilter
from services.search.records import Clip, Segment, VideoFacts, VideoIndex
from services.search.retrieval import PgRetrieval
from services.search.vectors import PgVectorIndex
from tests.db_setup import service_db

pytestmark = pytest.mark.integration

OWNER = uuid.uuid4()  # the user who owns this test's video


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _result(video_id: uuid.UUID, rng: np.random.Generator) -> VideoIndex:
    """Three clips with a segment each and a vector of each kind; the models are named after the video."""
    clips = [Clip(derived_id(video_id, "clip", i), video_id, i, i * 10.0, i * 10.0 + 10.0, f"k/{i}.jpg")
             for i in range(3)]
    segments = [Segment(derived_id(video_id, "segment", i), video_id, clips[i].id, i, i * 10.0 + 1,
                        i * 10.0 + 4, f"line {i}", "SIDECAR") for i in range(3)]
    return VideoIndex(
        clips, segments, vectors=[(s.id, _unit(rng, 384)) for s in segments], transcript_model=f"sbert/{video_id}",
        visual_vectors=[(c.id, _unit(rng, 512)) for c in clips], visual_model=f"clip/{video_id}",
    )


async def _counts(pool: Database, video_id: uuid.UUID) -> tuple[int, ...]:
    return tuple([
        await pool.fetchval(f"SELECT count(*) FROM {table} WHERE video_id = $1", video_id)
        for table in ("clips", "transcript_segments", "transcript_vectors", "visual_vectors")
    ])


async def test_reindexing_a_video_is_idempotent_and_delete_cascades(pg_dsn: str) -> None:
    pool = await service_db(pg_dsn, "search")
    try:
        video_id = uuid.uuid4()  # search keeps no reference to ingest's videos: its facts may come later
        rng = np.random.default_rng(0)
        first = _result(video_id, rng)
        clips = ClipStore(pool)
        await clips.replace_index(video_id, 1, first, owner=OWNER)
        assert await _counts(pool, video_id) == (3, 3, 3, 3)
        again = _result(video_id, rng)
        await clips.replace_index(video_id, 1, again, owner=OWNER)  # the same run again: same ids, new vectors
        assert await _counts(pool, video_id) == (3, 3, 3, 3)
        later = _result(video_id, rng)
        await clips.replace_index(video_id, 2, later, owner=OWNER)  # a later run
        with pytest.raises(FailedPrecondition) as superseded:  # an earlier run's late write changes nothing
            await clips.replace_index(video_id, 1, VideoIndex([], []), owner=OWNER)
        assert superseded.value.reason == "RUN_SUPERSEDED"
        assert await _counts(pool, video_id) == (3, 3, 3, 3)
        assert await clips.upsert_facts(VideoFacts(video_id, 1, "a title", f"videos/{video_id}/source.mp4",
                                                   "READY", 30.0, None))
        first = later

        index, retrieval = PgVectorIndex(pool), PgRetrieval(pool)
        query = np.asarray(first.visual_vectors[1][1])
        hits = await retrieval.visual(first.visual_model, query, 3, ClipFilter(OWNER, (video_id,)))
        assert len(hits) == 3 and {h.video_id for h in hits} == {video_id}
        assert hits[0].clip_id == first.clips[1].id
        assert hits[0].score == pytest.approx(1.0, abs=1e-5) and all(-1.0 <= h.score <= 1.0 for h in hits)
        other_model = await retrieval.visual("clip/other-model", query, 3, ClipFilter(OWNER, (video_id,)))
        assert other_model == []  # never mixed
        model, stored = await index.get("visual", first.visual_vectors[1][0]) or ("", None)
        assert model == first.visual_model and stored is not None and stored.shape == (512,)
        np.testing.assert_allclose(stored, first.visual_vectors[1][1], rtol=1e-6)  # the later run's vectors
        stale = await clips.stale_models(first.transcript_model, "clip/new")
        assert stale[f"visual:{first.visual_model}"] == 1 and f"transcript:{first.transcript_model}" not in stale

        assert await clips.delete_index(video_id) == 3
        assert await _counts(pool, video_id) == (0, 0, 0, 0)
        assert await clips.delete_index(video_id) == 0  # idempotent
        with pytest.raises(NotFound) as gone:  # a run that finishes after the video was deleted writes nothing
            await clips.replace_index(video_id, 3, _result(video_id, rng), owner=OWNER)
        assert gone.value.reason == "VIDEO_NOT_FOUND"
        assert await _counts(pool, video_id) == (0, 0, 0, 0)
    finally:
        await pool.close()
