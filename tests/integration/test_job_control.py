"""Cancel and retry against real PostgreSQL and Redis: a cancel sticks even while a worker is mid-stage (and
reaches ingest's video record through the pipeline's outbox, fencing the cancelled run's late updates), and
watching a retried job follows the new attempt instead of stopping at the old failure.

Ingest's side runs in-process (its servicer on its own schema, called as the relay's stub would over gRPC)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.common.errors import FailedPrecondition
from services.common.outbox import OutboxRelay
from services.common.principal import SYSTEM
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue, queue_key
from services.ingest.internal_servicer import IngestInternalServicer
from services.ingest.records import Video
from services.ingest.store import VideoStore
from services.pipeline.ingest_client import IngestClient, relay_handlers
from services.pipeline.job_store import JobStore
from services.pipeline.jobs import JobControl
from services.pipeline.processor import STAGE_WEIGHTS
from services.pipeline.records import Job, JobEvent, Run
from services.pipeline.reporter import JobCancelled, JobReporter
from services.pipeline.watch import JobWatcher
from tests.db_setup import ServicerStub, service_db

pytestmark = pytest.mark.integration


@pytest.fixture
async def parts(pg_dsn: str, redis_url: str):  # type: ignore[no-untyped-def]
    pool, ingest_pool = await service_db(pg_dsn, "pipeline"), await service_db(pg_dsn, "ingest")
    bus = ProgressBus.connect(redis_url)
    queue = await ArqJobQueue.connect(redis_url)
    videos = VideoStore(ingest_pool)
    ingest = ServicerStub(IngestInternalServicer(videos, OutboxRelay(ingest_pool, {}, name="ingest"), facts_wait_s=0))
    relay = OutboxRelay(pool, relay_handlers(ingest), name="pipeline", poll_s=0.2)
    relay.start()
    jobs = JobStore(pool, on_fact=lambda fact: relay.deliver_soon(fact, 10))
    parts = (jobs, videos, JobReporter(jobs, bus), JobControl(jobs, bus, queue), JobWatcher(jobs, bus, poll_s=0.2),
             IngestClient(ingest))
    yield parts
    await relay.stop()
    await queue.close()
    await bus.close()
    await pool.close()
    await ingest_pool.close()


async def _new_job(jobs: JobStore, videos: VideoStore) -> Job:
    """A stored video (ingest) and its queued job (pipeline), as the upload and SubmitVideoJob make them."""
    video_id, job_id = uuid.uuid4(), uuid.uuid4()
    job = Job(job_id, video_id, "QUEUED", queue_key=queue_key(job_id))
    await videos.create(Video(video_id, f"videos/{video_id}/source.mp4", "PENDING"))
    await jobs.create(job)
    return job


async def _claim(jobs: JobStore, job: Job, key: str | None = None) -> Run:
    claimed = await jobs.claim(job.id, queue_key=key or job.queue_key, run_id=uuid.uuid4(), worker="test:1",
                               lease_s=60)
    assert claimed is not None
    row, _ = claimed
    assert row.run_id is not None
    return Run(row.id, row.video_id, row.run_id, row.attempt, row.max_attempts, row.fence, owner_id=row.owner_id)


async def test_cancel_sticks_while_a_worker_is_mid_stage(parts) -> None:  # type: ignore[no-untyped-def]
    jobs, videos, reporter, control, _, ingest = parts
    job = await _new_job(jobs, videos)
    run = await _claim(jobs, job)
    await ingest.update(run.video_id, run.fence, state="PROCESSING", duration_s=12.0)
    report = reporter.for_run(run, STAGE_WEIGHTS)
    await report.start("SCENES", "detecting")

    cancelled = await control.cancel(SYSTEM, job.id)  # arrives while SCENES runs; answers once ingest has it
    assert cancelled.state == "CANCELLED"
    video = await videos.get(job.video_id)
    assert (video.state, video.failure_reason, video.duration_s) == ("FAILED", "processing cancelled", 12.0)

    with pytest.raises(JobCancelled):  # the worker's next report learns of it and stops
        await report.done("SCENES", "3 scenes")
    with pytest.raises(FailedPrecondition) as fenced:  # the INDEX stage's READY mark is fenced in ingest
        await ingest.update(run.video_id, run.fence, state="READY", scene_count=0)
    assert fenced.value.reason == "RUN_SUPERSEDED"
    with pytest.raises(FailedPrecondition):
        await ingest.update(run.video_id, run.fence, thumbnail_key="videos/x/late.jpg")
    assert (await jobs.get(job.id, scope=None)).state == "CANCELLED"
    video = await videos.get(job.video_id)
    assert (video.state, video.failure_reason, video.thumbnail_key) == ("FAILED", "processing cancelled", "")
    with pytest.raises(FailedPrecondition) as err:
        await control.cancel(SYSTEM, job.id)
    assert err.value.reason == "JOB_ALREADY_FINISHED"


async def test_failure_event_keeps_the_stage_it_failed_in(parts) -> None:  # type: ignore[no-untyped-def]
    jobs, videos, reporter, _, _, _ = parts
    job = await _new_job(jobs, videos)
    run = await _claim(jobs, job)
    report = reporter.for_run(run, STAGE_WEIGHTS)
    await report.start("PROBE", "probing")
    await report.done("PROBE", "ok")
    await report.start("SCENES", "detecting")
    event = await jobs.end_run(job.id, run.run_id, outcome="retry", code="BOOM", message="boom", new_key="k:1")
    assert event is not None
    last = (await jobs.events(job.id, scope=None))[-1]
    assert (last.stage, last.stage_state, last.job_state) == ("SCENES", "FAILED", "QUEUED")
    assert last.progress == pytest.approx(STAGE_WEIGHTS["PROBE"])
    again = await jobs.get(job.id, scope=None)
    assert (again.failure_reason, again.failure_code, again.queue_key, again.run_id) == ("BOOM: boom", "BOOM",
                                                                                         "k:1", None)


async def test_watching_a_retried_job_follows_the_new_attempt(parts) -> None:  # type: ignore[no-untyped-def]
    jobs, videos, reporter, control, watcher, _ = parts
    job = await _new_job(jobs, videos)
    run = await _claim(jobs, job)
    await jobs.end_run(job.id, run.run_id, outcome="fail", code="BROKEN", message="broken")
    assert (await jobs.get(job.id, scope=None)).state == "FAILED"
    video = await videos.get(job.video_id)  # the final failure reached ingest through the outbox
    assert (video.state, video.failure_reason) == ("FAILED", "BROKEN: broken")
    retried = await control.retry(SYSTEM, job.id)

    seen: list[str] = []

    async def watch() -> None:
        async for event in watcher.watch(SYSTEM, job.id):
            assert isinstance(event, JobEvent)
            seen.append(event.job_state)

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.5)
    assert not task.done(), "watch stopped at the old FAILED event"
    second = await _claim(jobs, job, retried.queue_key)
    assert second.attempt == 1 and second.run_id != run.run_id
    await reporter.for_run(second, STAGE_WEIGHTS).finish("INDEX", "done")
    await asyncio.wait_for(task, 10)
    assert seen[:3] == ["RUNNING", "FAILED", "QUEUED"]


async def test_a_jobs_priority_orders_its_queue_entries_is_kept_on_retry_and_counted(parts) -> None:  # type: ignore[no-untyped-def]
    _, videos, _, control, _, _ = parts
    video_id = uuid.uuid4()
    await videos.create(Video(video_id, f"videos/{video_id}/source.mp4", "PENDING"))
    job, created = await control.submit(video_id, 1, uuid.uuid4(), "BATCH")
    assert created and job.priority == "BATCH"
    stats = await control.queue_stats()
    assert [p for p, _ in stats.jobs] == ["HIGH", "STANDARD", "BATCH"]
    assert dict(stats.jobs)["BATCH"][0] >= 1  # queued (the session's database holds other tests' jobs too)
    assert [(q.name, q.priorities) for q in stats.queues] == [
        ("clipmind:queue:default", ["HIGH", "STANDARD", "BATCH"])]
    assert stats.queues[0].depth >= 1

    await control.cancel(SYSTEM, job.id)
    again = await control.retry(SYSTEM, job.id)  # a retry keeps the job's priority...
    assert again.priority == "BATCH"
    await control.cancel(SYSTEM, again.id)
    urgent = await control.retry(SYSTEM, job.id, "HIGH")  # ...unless it asks for another
    assert (urgent.priority, urgent.state, urgent.attempt) == ("HIGH", "QUEUED", 0)
