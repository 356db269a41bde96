"""Jobs whose Redis queue entry is lost are not lost: against real PostgreSQL and redis-server.

The database is the record of what must run. An upload whose job Redis cannot take still succeeds (its
data is stored), and the worker's sweep (``JobControl.requeue_lost``) enqueues again every idle queued job
whose queue entry is gone, while leaving alone jobs still queued or ended; a running job whose worker is
gone is taken over by the lease sweep (``JobControl.take_over_expired``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from clipmind.pipeline.internal.v1.pipeline_internal_service_pb2 import SubmitVideoJobRequest

from services.common.blobstore import LocalBlobStore
from services.common.outbox import OutboxRelay
from services.common.principal import SYSTEM
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue, enqueue_or_leave_to_sweep, queue_key
from services.ingest.ingestor import VideoIngestor
from services.ingest.inputs import VideoMeta
from services.ingest.store import SUBMIT_JOB_TOPIC, UploadStore, VideoStore
from services.launcher import EmbeddedRedis, free_port
from services.pipeline.internal_servicer import PipelineInternalServicer
from services.pipeline.job_store import JobStore
from services.pipeline.jobs import JobControl
from services.pipeline.records import Job
from tests.db_setup import ServicerStub, service_db
from tests.media import make_scene_video

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(pg_dsn: str):  # type: ignore[no-untyped-def]
    """The pipeline's schema."""
    pool = await service_db(pg_dsn, "pipeline")
    yield pool
    await pool.close()


@pytest.fixture
async def parts(db, redis_url: str):  # type: ignore[no-untyped-def]
    """Job store, the arq queue on the session's redis-server, and the JobControl over them."""
    bus, queue = ProgressBus.connect(redis_url), await ArqJobQueue.connect(redis_url)
    jobs = JobStore(db)
    yield jobs, queue, JobControl(jobs, bus, queue)
    await queue.close()
    await bus.close()


@pytest.fixture
def own_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A redis-server of this test's own, to stop and start again."""
    server = EmbeddedRedis(tmp_path / "redis", tmp_path / "redis.log", free_port())
    server.start()
    yield server
    server.stop()


async def _new_job(jobs: JobStore) -> Job:
    job_id = uuid.uuid4()
    job = Job(job_id, uuid.uuid4(), "QUEUED", queue_key=queue_key(job_id))
    await jobs.create(job)
    return job


async def _age(pool, job_id: uuid.UUID, seconds: int = 600) -> None:  # type: ignore[no-untyped-def]
    await pool.execute(
        "UPDATE jobs SET update_time = now() - make_interval(secs => $2) WHERE id = $1", job_id, seconds
    )


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    yield path.read_bytes()


async def test_sweep_requeues_a_job_whose_entry_was_lost(db, parts) -> None:  # type: ignore[no-untyped-def]
    jobs, queue, control = parts
    job = await _new_job(jobs)  # committed, never enqueued: Redis was down at that moment
    assert await queue.state(job.queue_key) == "not_found"
    assert job.id not in await control.requeue_lost(idle_s=60), "a job idle for less than idle_s was swept"

    await _age(db, job.id)
    assert job.id in await control.requeue_lost(idle_s=60)
    again = await jobs.get(job.id, scope=None)
    assert again.state == "QUEUED" and again.queue_key != job.queue_key
    assert again.queue_key.startswith(f"{job.id}:")
    assert await queue.state(again.queue_key) == "queued"
    event = (await jobs.events(job.id, scope=None))[-1]
    assert event.job_state == "QUEUED" and "re-queued" in event.message and job.queue_key in event.message

    await _age(db, job.id)  # idle again, but its new entry is waiting in the queue: left alone
    assert job.id not in await control.requeue_lost(idle_s=60)
    assert (await jobs.get(job.id, scope=None)).queue_key == again.queue_key


async def test_sweep_leaves_waiting_running_and_ended_jobs_alone(db, parts) -> None:  # type: ignore[no-untyped-def]
    jobs, queue, control = parts
    waiting = await _new_job(jobs)
    await queue.enqueue(waiting.id, waiting.queue_key)  # a long backlog: queued, not lost
    ended = await _new_job(jobs)
    await control.cancel(SYSTEM, ended.id)
    running = await _new_job(jobs)  # RUNNING in the database, its entry gone (worker and Redis lost)
    await jobs.record_event(running.id, stage="SCENES", stage_state="STARTED", progress=0.3,
                            message="detecting", job_state="RUNNING", attempt=1)
    for job in (waiting, ended, running):
        await _age(db, job.id)

    swept = await control.requeue_lost(idle_s=60)
    assert waiting.id not in swept and ended.id not in swept
    assert running.id not in swept, "a running job is the lease's business, not the queue sweep's"
    assert (await jobs.get(ended.id, scope=None)).state == "CANCELLED"
    assert (await jobs.get(waiting.id, scope=None)).queue_key == waiting.queue_key

    # Its worker is gone (a row from before leases, unchanged for long): the lease sweep takes it over.
    assert await control.take_over_expired(idle_s=60) == [running.id]
    moved = await jobs.get(running.id, scope=None)
    assert moved.state == "QUEUED" and moved.stage == "SCENES" and moved.queue_key != running.queue_key
    assert moved.failure_code == "WORKER_LOST"
    assert await queue.state(moved.queue_key) == "queued"

    # A sweep that read the job before a retry or another sweep moved it changes nothing.
    assert await jobs.requeue(running.id, expected_key=running.queue_key, new_key="x:1", message="m") is None
    assert (await jobs.get(running.id, scope=None)).queue_key == moved.queue_key


async def test_upload_succeeds_while_redis_is_down_and_runs_once_it_is_back(  # type: ignore[no-untyped-def]
    db, pg_dsn: str, own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    ingest_db = await service_db(pg_dsn, "ingest")
    jobs, videos = JobStore(db), VideoStore(ingest_db)
    queue = await ArqJobQueue.connect(own_redis.url)
    bus = ProgressBus.connect(own_redis.url)
    control = JobControl(jobs, bus, queue)
    internal = ServicerStub(PipelineInternalServicer(control))  # ingest's submissions carry the video's owner

    async def submit(payload: bytes) -> None:  # the pipeline's SubmitVideoJob, in process
        await internal.SubmitVideoJob(SubmitVideoJobRequest.FromString(payload))

    # Submissions other tests left in the session's database are not this test's business.
    await ingest_db.execute("DELETE FROM outbox WHERE topic = $1", SUBMIT_JOB_TOPIC)
    relay = OutboxRelay(ingest_db, {SUBMIT_JOB_TOPIC: submit}, name="test", poll_s=0.2)
    relay.start()
    ingestor = VideoIngestor(
        videos, UploadStore(ingest_db), LocalBlobStore(tmp_path / "blobs", "http://media.invalid"), relay,
        tmp_path / "staging", max_upload_bytes=50_000_000, max_chunk_bytes=1_000_000, submit_wait_s=15,
    )
    source = make_scene_video(tmp_path / "clip.mp4", audio=False)
    try:
        own_redis.stop()
        started = time.monotonic()
        video = await ingestor.ingest_stream(SYSTEM, VideoMeta(filename="clip.mp4"), _chunks(source))
        assert time.monotonic() - started < 15, "the upload waited far longer than the enqueue timeout"
        assert (await videos.get(video.id)).state == "PENDING"
        (job,) = await jobs.list_page(scope=None, limit=5, after=None, video_id=video.id)
        assert job.state == "QUEUED"
        assert (tmp_path / "blobs" / video.blob_key).is_file()
        assert not await enqueue_or_leave_to_sweep(queue, job.id, job.queue_key, timeout_s=2)

        own_redis.start()  # back, without the entry that was never written
        await _age(db, job.id)
        assert job.id in await control.requeue_lost(idle_s=60)
        assert await queue.state((await jobs.get(job.id, scope=None)).queue_key) == "queued"
    finally:
        await relay.stop()
        await bus.close()
        await queue.close()
        await ingest_db.close()
