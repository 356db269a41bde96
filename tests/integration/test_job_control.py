"""Cancel and retry against real PostgreSQL and Redis: a cancel sticks even while a worker is mid-stage,
and watching a retried job follows the new attempt instead of stopping at the old failure."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.common.db import create_pool
from services.common.errors import FailedPrecondition
from services.common.job_store import JobStore
from services.common.queue import ArqJobQueue, ProgressBus
from services.common.records import Job, ProcessedVideo, Video
from services.common.store import VideoStore
from services.pipeline.jobs import JobControl
from services.pipeline.processor import STAGE_WEIGHTS
from services.pipeline.reporter import JobCancelled, JobReporter

pytestmark = pytest.mark.integration


@pytest.fixture
async def parts(pg_dsn: str, redis_url: str):  # type: ignore[no-untyped-def]
    pool = await create_pool(pg_dsn)
    bus = ProgressBus.connect(redis_url)
    queue = await ArqJobQueue.connect(redis_url)
    jobs, videos = JobStore(pool), VideoStore(pool)
    yield jobs, videos, JobReporter(jobs, bus), JobControl(jobs, bus, queue, poll_s=0.2)
    await queue.close()
    await bus.close()
    await pool.close()


async def _new_job(videos: VideoStore) -> Job:
    video_id = uuid.uuid4()
    job = Job(uuid.uuid4(), video_id, "QUEUED")
    await videos.create_with_job(Video(video_id, f"videos/{video_id}/source.mp4", "PENDING"), job)
    return job


async def test_cancel_sticks_while_a_worker_is_mid_stage(parts) -> None:  # type: ignore[no-untyped-def]
    jobs, videos, reporter, control = parts
    job = await _new_job(videos)
    report = reporter.for_job(job.id, STAGE_WEIGHTS)
    await report.job_started(1)
    await report.start("SCENES", "detecting")

    cancelled = await control.cancel(job.id)  # arrives while SCENES runs
    assert cancelled.state == "CANCELLED"

    with pytest.raises(JobCancelled):  # the worker's next report learns of it and stops
        await report.done("SCENES", "3 scenes")
    with pytest.raises(FailedPrecondition):
        await videos.save_processed(job.video_id, ProcessedVideo([], []), job_id=job.id)
    assert (await jobs.get(job.id)).state == "CANCELLED"
    video = await videos.get(job.video_id)
    assert (video.state, video.failure_reason) == ("FAILED", "processing cancelled")
    with pytest.raises(FailedPrecondition) as err:
        await control.cancel(job.id)
    assert err.value.reason == "JOB_ALREADY_FINISHED"


async def test_failure_event_keeps_the_stage_it_failed_in(parts) -> None:  # type: ignore[no-untyped-def]
    jobs, videos, reporter, _ = parts
    job = await _new_job(videos)
    report = reporter.for_job(job.id, STAGE_WEIGHTS)
    await report.job_started(1)
    await report.done("PROBE", "ok")
    await report.start("SCENES", "detecting")
    await reporter.for_job(job.id, STAGE_WEIGHTS).failed("boom", final=False)  # a fresh report, as the worker
    last = (await jobs.events(job.id))[-1]
    assert (last.stage, last.stage_state, last.job_state) == ("SCENES", "FAILED", "RUNNING")
    assert last.progress == pytest.approx(STAGE_WEIGHTS["PROBE"])


async def test_watching_a_retried_job_follows_the_new_attempt(parts) -> None:  # type: ignore[no-untyped-def]
    jobs, videos, reporter, control = parts
    job = await _new_job(videos)
    report = reporter.for_job(job.id, STAGE_WEIGHTS)
    await report.job_started(1)
    await report.failed("broken", final=True)
    assert (await jobs.get(job.id)).state == "FAILED"
    await control.retry(job.id)

    seen: list[str] = []

    async def watch() -> None:
        async for event in control.watch(job.id):
            seen.append(event.job_state)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.5)
    assert not watcher.done(), "watch stopped at the old FAILED event"
    second = reporter.for_job(job.id, STAGE_WEIGHTS)
    await second.job_started(2)
    await second.finish("INDEX", "done")
    await asyncio.wait_for(watcher, 10)
    assert seen[:3] == ["RUNNING", "FAILED", "QUEUED"]
    assert seen[-1] == "SUCCEEDED"
