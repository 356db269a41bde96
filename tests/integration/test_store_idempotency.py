"""Re-running a job's index step leaves the same rows and vectors, never duplicates; an older run's index
never replaces a newer one's; deleting a video removes everything it owns (real PostgreSQL + pgvector)."""

from __future__ import annotations

import uuid

import asyncpg
import numpy as np
import pytest

from services.common.clip_store import ClipStore
from services.common.db import create_pool
from services.common.errors import FailedPrecondition, NotFound
from services.common.records import Clip, Job, ProcessedVideo, Segment, Video, derived_id
from services.common.store import VideoStore
from services.common.vectors import PgVectorIndex
from tests.db_setup import add_video_with_job

pytestmark = pytest.mark.integration


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _result(video_id: uuid.UUID, rng: np.random.Generator) -> ProcessedVideo:
    clips = [Clip(derived_id(video_id, "clip", i), video_id, i, i * 10.0, i * 10.0 + 10.0, f"k/{i}.jpg")
             for i in range(3)]
    segments = [Segment(derived_id(video_id, "segment", i), video_id, clips[i].id, i, i * 10.0 + 1,
                        i * 10.0 + 4, f"line {i}", "SIDECAR") for i in range(3)]
    return ProcessedVideo(
        clips, segments, vectors=[(s.id, _unit(rng, 384)) for s in segments], transcript_source="SIDECAR",
        transcript_model="sbert/test", visual_vectors=[(c.id, _unit(rng, 512)) for c in clips],
        visual_model="clip/test",
    )


async def _counts(pool: asyncpg.Pool, video_id: uuid.UUID) -> tuple[int, ...]:
    return tuple([
        await pool.fetchval(f"SELECT count(*) FROM {table} WHERE video_id = $1", video_id)
        for table in ("clips", "transcript_segments", "transcript_vectors", "visual_vectors")
    ])


async def test_reindexing_a_video_is_idempotent_and_delete_cascades(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn)
    try:
        videos = VideoStore(pool)
        video_id = uuid.uuid4()
        await add_video_with_job(videos, Video(video_id, f"videos/{video_id}/source.mp4", "PENDING"),
                                     Job(uuid.uuid4(), video_id, "QUEUED"))
        rng = np.random.default_rng(0)
        first = _result(video_id, rng)
        clips = ClipStore(pool)
        await clips.replace_index(video_id, 1, first)
        assert await _counts(pool, video_id) == (3, 3, 3, 3)
        await clips.replace_index(video_id, 1, _result(video_id, rng))  # the same run again: same ids, new vectors
        assert await _counts(pool, video_id) == (3, 3, 3, 3)
        later = _result(video_id, rng)
        await clips.replace_index(video_id, 2, later)  # a later run
        with pytest.raises(FailedPrecondition) as superseded:  # an earlier run's late write changes nothing
            await clips.replace_index(video_id, 1, ProcessedVideo([], []))
        assert superseded.value.reason == "RUN_SUPERSEDED"
        assert await _counts(pool, video_id) == (3, 3, 3, 3)
        await videos.update_fields(video_id, state="READY", scene_count=3, transcript_model="sbert/test",
                                   visual_model="clip/test")
        first = later

        index = PgVectorIndex(pool)
        query = np.asarray(first.visual_vectors[1][1])
        hits = await index.query("visual", "clip/test", query, 3)
        assert len(hits) == 3
        assert await index.query("visual", "clip/other-model", query, 3) == []  # never mixed
        model, stored = await index.get("visual", first.visual_vectors[1][0]) or ("", None)
        assert model == "clip/test" and stored is not None and stored.shape == (512,)
        exact = await index.scores("visual", "clip/test", query, [c.id for c in first.clips])
        assert len(exact) == 3 and all(-1.0 <= v <= 1.0 for v in exact.values())
        assert await videos.stale_models("sbert/test", "clip/new") == {"visual:clip/test": 1}

        await videos.delete(video_id)
        assert await _counts(pool, video_id) == (0, 0, 0, 0)
        with pytest.raises(NotFound):  # a run that finishes after the video was deleted writes nothing
            await clips.replace_index(video_id, 3, _result(video_id, rng))
        assert await _counts(pool, video_id) == (0, 0, 0, 0)
    finally:
        await pool.close()
