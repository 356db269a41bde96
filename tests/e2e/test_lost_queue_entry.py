"""The running worker's sweep finds a job that only the database knows of (its Redis entry lost) and runs it."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import grpc
import pytest
from clipmind.pipeline.v1 import pipeline_service_pb2 as pipeline_pb

from services.common.ids import job_id_for
from services.common.queue import queue_key
from services.ingest.records import Video
from services.ingest.store import VideoStore
from services.pipeline.job_store import JobStore
from services.pipeline.records import Job
from tests.db_setup import service_db
from tests.e2e.clients import wait_ready, watch_job
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.e2e


async def _insert_lost_job(database_url: str, video: Video, job: Job) -> None:
    """The job first (its queue entry never written), then the video: ingest's submission of the video's job
    finds the job there and enqueues nothing."""
    pipeline, ingest = await service_db(database_url, "pipeline"), await service_db(database_url, "ingest")
    try:
        await JobStore(pipeline).create(job)
        # Idle for ten minutes as far as the sweep can tell, so the test need not wait for requeue_idle_s.
        await pipeline.execute("UPDATE jobs SET update_time = now() - interval '10 minutes' WHERE id = $1", job.id)
        await VideoStore(ingest).create(video)
    finally:
        await pipeline.close()
        await ingest.close()


def test_worker_sweep_runs_a_job_whose_queue_entry_was_lost(
    endpoints, channel: grpc.Channel, tmp_path: Path, user_id: uuid.UUID  # type: ignore[no-untyped-def]
) -> None:
    video_id = uuid.uuid4()
    job_id = job_id_for(video_id, 1)
    source = make_scene_video(tmp_path / "lost.mp4", (SceneSpec(3.0, "testsrc2"), SceneSpec(3.0, "smptebars")),
                              audio=False)
    blob_key = f"videos/{video_id}/source.mp4"
    (Path(endpoints.blob_dir) / blob_key).parent.mkdir(parents=True)
    shutil.copyfile(source, Path(endpoints.blob_dir) / blob_key)
    video = Video(video_id, blob_key, "PENDING", title="lost", filename="lost.mp4", content_type="video/mp4",
                  size_bytes=source.stat().st_size, owner_id=user_id)
    asyncio.run(_insert_lost_job(endpoints.database_url, video,
                                 Job(job_id, video_id, "QUEUED", queue_key=queue_key(job_id, 1), owner_id=user_id)))

    events = watch_job(channel, f"jobs/{job_id}", timeout=180)  # the sweep runs every 30 s
    assert "re-queued" in events[0].message and f"{job_id}:1" in events[0].message
    assert events[-1].job_state == pipeline_pb.Job.STATE_SUCCEEDED
    final = wait_ready(channel, f"videos/{video_id}")
    assert final.duration_seconds == pytest.approx(6.0, abs=0.2)
