"""The database pool never makes a request wait forever, and uploads never deadlock on it.

Against real PostgreSQL: a pool with every connection taken answers UNAVAILABLE with a retry hint after
its acquire timeout, and many concurrent uploads through a tiny pool all complete (an upload holds no
connection while it writes bytes or validates a video)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from clipmind.pipeline.internal.v1.pipeline_internal_service_pb2 import SubmitVideoJobRequest
from google.rpc import error_details_pb2

from services.common.blobstore import LocalBlobStore
from services.common.errors import Unavailable
from services.common.grpc_errors import to_rpc_status
from services.common.outbox import OutboxRelay
from services.common.principal import SYSTEM
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue
from services.ingest.ingestor import VideoIngestor
from services.ingest.records import Video
from services.ingest.store import SUBMIT_JOB_TOPIC, UploadStore, VideoStore
from services.pipeline.internal_servicer import PipelineInternalServicer
from services.pipeline.job_store import JobStore
from services.pipeline.jobs import JobControl
from tests.db_setup import ServicerStub, service_db
from tests.media import make_scene_video

pytestmark = pytest.mark.integration


async def test_an_exhausted_pool_answers_unavailable_with_retry_info(pg_dsn: str) -> None:
    db = await service_db(pg_dsn, "ingest", max_size=1, acquire_timeout_s=0.5)
    try:
        async with db.acquire():
            started = time.monotonic()
            with pytest.raises(Unavailable) as busy:
                await db.fetchval("SELECT 1")
            assert 0.4 < time.monotonic() - started < 3
        assert busy.value.reason == "DATABASE_BUSY" and busy.value.retry_delay_s
        status = to_rpc_status(busy.value)
        infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(infos) == 1
        retry = error_details_pb2.RetryInfo()
        infos[0].Unpack(retry)
        assert retry.retry_delay.ToTimedelta().total_seconds() == busy.value.retry_delay_s
        assert await db.fetchval("SELECT 1") == 1  # free again: served at once
    finally:
        await db.close()


async def test_an_unreachable_database_answers_unavailable_quickly() -> None:
    import asyncpg

    from services.common.db import Database

    pool = await asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=2, timeout=2)
    db = Database(pool, acquire_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(Unavailable) as down:
        await db.fetchval("SELECT 1")
    assert down.value.reason == "DATABASE_UNAVAILABLE" and time.monotonic() - started < 3
    await db.close()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_many_concurrent_uploads_through_a_tiny_pool_all_complete(  # type: ignore[no-untyped-def]
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    db = await service_db(pg_dsn, "ingest", max_size=2, acquire_timeout_s=5)
    pipeline_db = await service_db(pg_dsn, "pipeline", max_size=2, acquire_timeout_s=5)
    queue = await ArqJobQueue.connect(redis_url)
    bus = ProgressBus.connect(redis_url)
    jobs = JobStore(pipeline_db)
    control = JobControl(jobs, bus, queue)
    internal = ServicerStub(PipelineInternalServicer(control))  # ingest's submissions carry the video's owner

    async def submit(payload: bytes) -> None:  # the pipeline's SubmitVideoJob, in process, on its own tiny pool
        await internal.SubmitVideoJob(SubmitVideoJobRequest.FromString(payload))

    # The relay holds one of ingest's two connections while it delivers: uploads must still all complete.
    # Submissions other tests left in the session's database are not this test's to deliver.
    await db.execute("DELETE FROM outbox WHERE topic = $1", SUBMIT_JOB_TOPIC)
    relay = OutboxRelay(db, {SUBMIT_JOB_TOPIC: submit}, name="test", poll_s=0.2)
    relay.start()
    ingestor = VideoIngestor(
        VideoStore(db), UploadStore(db), LocalBlobStore(tmp_path / "blobs", "http://media.invalid"),
        relay, tmp_path / "staging", max_upload_bytes=50_000_000, max_chunk_bytes=1_000_000,
    )
    data = make_scene_video(tmp_path / "clip.mp4", audio=False).read_bytes()

    async def one(i: int) -> Video:
        upload = await ingestor.create_upload(SYSTEM, f"clip{i}.mp4", "video/mp4", len(data))
        for offset in range(0, len(data), 16 * 1024):
            await ingestor.write_upload(SYSTEM, upload.id, offset, data[offset:offset + 16 * 1024])
        return await ingestor.complete_upload(SYSTEM, upload.id, f"clip {i}", "", None)

    try:
        videos = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(16))), 240)
        assert [video.state for video in videos] == ["PENDING"] * 16
        for _ in range(300):  # every job submitted, none lost (within 60 s)
            if not await relay.pending():
                break
            await asyncio.sleep(0.2)
        assert await relay.pending() == 0
        for video in videos:  # each submission made its video's job in the pipeline's schema
            job = await jobs.get(video.job_id, scope=None)
            assert job.video_id == video.id
    finally:
        await relay.stop()
        await bus.close()
        await queue.close()
        await pipeline_db.close()
        await db.close()
