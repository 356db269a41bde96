"""Test setup in the database: rows that production code makes across services in two steps."""

from __future__ import annotations

from services.common.job_store import JobStore
from services.common.records import Job, Video
from services.common.store import VideoStore


async def add_video_with_job(videos: VideoStore, video: Video, job: Job) -> None:
    """A stored video and its QUEUED job, as ingest's submission and the pipeline's SubmitVideoJob make them
    (without the outbox in between)."""
    await videos.create(video)
    await JobStore(videos._pool).create(job)
