"""Keyset pages of videos, jobs and dead letters against real PostgreSQL: newest first, every row once,
filters applied on every page."""

from __future__ import annotations

import uuid

import pytest

from services.ingest.records import Video
from services.ingest.store import VideoStore
from services.pipeline.job_store import JobStore
from services.pipeline.records import DeadLetter, Job
from tests.db_setup import service_db

pytestmark = pytest.mark.integration


async def _pages(fetch, limit: int) -> list:  # type: ignore[no-untyped-def]
    seen, after = [], None
    while True:
        page = await fetch(limit=limit, after=after)
        seen += page
        if len(page) < limit:
            return seen
        after = (page[-1].create_time, page[-1].id)


async def test_pages_are_newest_first_complete_and_filtered(pg_dsn: str) -> None:
    ingest, pipeline = await service_db(pg_dsn, "ingest"), await service_db(pg_dsn, "pipeline")
    videos, jobs = VideoStore(ingest), JobStore(pipeline)
    try:
        state = "PENDING"
        made: list[tuple[Video, Job]] = []
        for _ in range(5):
            video_id, job_id = uuid.uuid4(), uuid.uuid4()
            video, job = Video(video_id, f"videos/{video_id}/source.mp4", state), Job(job_id, video_id, "QUEUED")
            await videos.create(video)
            await jobs.create(job)
            await jobs.add_dead_letter(DeadLetter(uuid.uuid4(), job_id, video_id, "boom", 3))
            made.append((video, job))
        mine_v = {v.id for v, _ in made}
        mine_j = {j.id for _, j in made}

        all_videos = await _pages(lambda **kw: videos.list_page(owner=None, **kw), 2)
        ours = [v.id for v in all_videos if v.id in mine_v]
        assert ours == [v.id for v, _ in reversed(made)]  # newest first, each once
        assert len({v.id for v in all_videos}) == len(all_videos)
        pending = await _pages(lambda **kw: videos.list_page(owner=None, state="PENDING", **kw), 2)
        assert mine_v <= {v.id for v in pending} and all(v.state == "PENDING" for v in pending)
        ready = await _pages(lambda **kw: videos.list_page(owner=None, state="READY", **kw), 2)
        assert not [v for v in ready if v.id in mine_v]

        all_jobs = await _pages(lambda **kw: jobs.list_page(scope=None, **kw), 2)
        assert [j.id for j in all_jobs if j.id in mine_j] == [j.id for _, j in reversed(made)]
        one = made[2]
        assert [j.id for j in await jobs.list_page(scope=None, limit=10, after=None, video_id=one[0].id)] == [one[1].id]
        assert await jobs.list_page(scope=None, limit=10, after=None, video_id=one[0].id, state="RUNNING") == []

        letters = await _pages(lambda **kw: jobs.dead_letters(scope=None, **kw), 2)
        assert [d.job_id for d in letters if d.job_id in mine_j] == [j.id for _, j in reversed(made)]
    finally:
        await ingest.close()
        await pipeline.close()
