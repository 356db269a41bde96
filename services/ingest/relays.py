"""What ingest's outbox delivers, topic by topic: each row becomes one idempotent internal call.

- ``pipeline.submit_video_job`` → PipelineInternalService.SubmitVideoJob (a stored video's job, the video's
  owner's; a row queued before ownership names none, and gets it from the video);
- ``pipeline.delete_video_jobs`` → PipelineInternalService.DeleteVideoJobs (a deleted video's jobs);
- ``search.video_facts`` → SearchInternalService.UpsertVideoFacts (the video as it is at delivery time, with
  its revision and owner; a deleted video has nothing to send);
- ``search.delete_video_index`` → SearchInternalService.DeleteVideoIndex;
- ``analytics.record_usage`` → AnalyticsInternalService.RecordUsage (``services.common.usage_events``).

Answers that mean "done already" or "nothing to do any more" are swallowed (see ``services.common.outbox``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2 as pipeline_pb
from clipmind.search.internal.v1 import search_internal_service_pb2 as search_pb

from services.common import usage_events
from services.common.convert import timestamp
from services.common.errors import NotFound
from services.common.names import parse_video_name, user_name, video_name
from services.common.outbox import Handler
from services.ingest.store import (
    DELETE_INDEX_TOPIC,
    DELETE_JOBS_TOPIC,
    FACTS_TOPIC,
    SUBMIT_JOB_TOPIC,
    VideoStore,
)

log = logging.getLogger(__name__)


def handlers(videos: VideoStore, pipeline: Any, search: Any, analytics: Any) -> dict[str, Handler]:
    """The outbox handlers of ingest, calling the pipeline, search and analytics stubs (``InternalChannels.stub``)."""

    async def submit_job(payload: bytes) -> None:
        request = pipeline_pb.SubmitVideoJobRequest.FromString(payload)
        try:
            if not request.owner:  # queued before videos had owners: the job is the video's owner's
                video = await videos.get(parse_video_name(request.video, "video"))
                request.owner = user_name(video.owner_id)
            await pipeline.SubmitVideoJob(request)
        except NotFound:  # the video was deleted before its job could be submitted: nothing to do
            log.info("job submission dropped: its video is gone")

    async def delete_jobs(payload: bytes) -> None:
        await pipeline.DeleteVideoJobs(pipeline_pb.DeleteVideoJobsRequest.FromString(payload))

    async def publish_facts(payload: bytes) -> None:
        try:
            video = await videos.get(uuid.UUID(payload.decode()))
        except NotFound:
            return  # deleted since: search gets the deletion instead
        facts = search_pb.VideoFacts(
            video=video_name(video.id), revision=video.revision, title=video.title, blob_key=video.blob_key,
            state=video.state, duration_seconds=video.duration_s, create_time=timestamp(video.create_time),
            owner=user_name(video.owner_id),
        )
        await search.UpsertVideoFacts(search_pb.UpsertVideoFactsRequest(facts=facts))

    async def delete_index(payload: bytes) -> None:
        await search.DeleteVideoIndex(search_pb.DeleteVideoIndexRequest.FromString(payload))

    return {SUBMIT_JOB_TOPIC: submit_job, DELETE_JOBS_TOPIC: delete_jobs, FACTS_TOPIC: publish_facts,
            DELETE_INDEX_TOPIC: delete_index, **usage_events.handler(analytics)}
