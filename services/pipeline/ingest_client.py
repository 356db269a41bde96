"""The pipeline's side of ingest's video records (``IngestInternalService``): where a video's bytes are, and
what processing found and decided about it.

A run reports its probe facts and thumbnail with direct calls (``IngestClient.update``, fenced by the run's
``fence``); the end of a job — READY, FAILED, cancelled — is a fact of the job's own transaction, so it goes
through the pipeline's outbox (topic ``VIDEO_PROCESSING_TOPIC``, built by ``processing_request``) and reaches
ingest however long ingest is away. Both are idempotent and fenced in ingest: an update from a run that was
cancelled or taken over (a lower fence) is refused there.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from clipmind.ingest.internal.v1 import ingest_internal_service_pb2 as pb

from services.common.errors import FailedPrecondition, NotFound
from services.common.names import parse_user_name, video_name
from services.common.outbox import Handler
from services.pipeline.records import VideoSource

log = logging.getLogger(__name__)

VIDEO_PROCESSING_TOPIC = "ingest.update_video_processing"
# How long a cancel or a final failure waits for ingest to record it before answering (longer: it follows).
FACT_WAIT_S = 2.0

# Facts a run reports: record/column name -> request field.
_FACT_FIELDS = {
    "duration_s": "duration_seconds", "width": "width", "height": "height", "frame_rate": "frame_rate",
    "video_codec": "video_codec", "audio_codec": "audio_codec", "has_audio": "has_audio",
    "thumbnail_key": "thumbnail_key", "scene_count": "scene_count", "transcript_source": "transcript_source",
    "transcript_model": "transcript_model", "visual_model": "visual_model",
    "transcript_language": "transcript_language",
}


def processing_request(video_id: uuid.UUID, fence: int, state: str = "", failure_reason: str = "",
                       **facts: Any) -> pb.UpdateVideoProcessingRequest:
    """An UpdateVideoProcessing request: ``state`` PROCESSING, READY, FAILED, CANCELLED or "" (facts only)."""
    request = pb.UpdateVideoProcessingRequest(
        video=video_name(video_id), fence=fence, failure_reason=failure_reason,
        state=pb.ProcessingState.Value(f"PROCESSING_STATE_{state or 'UNSPECIFIED'}"),
    )
    for name, value in facts.items():
        setattr(request, _FACT_FIELDS[name], value)
    return request


class IngestClient:
    """Reads and updates ingest's video records (a guarded stub from ``InternalChannels``)."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    async def source(self, video_id: uuid.UUID) -> VideoSource:
        """Where the video's bytes are and whose video it is; NOT_FOUND once it was deleted, UNAVAILABLE while
        ingest is away. An ``owner`` that is not ``users/{uuid}`` is INVALID_ARGUMENT naming ``owner`` (ingest
        broke the contract: the run fails rather than guess whose index to write)."""
        answer = await self._stub.GetVideoSource(pb.GetVideoSourceRequest(video=video_name(video_id)))
        owner_id = parse_user_name(answer.owner, "owner") if answer.owner else None
        return VideoSource(video_id, answer.blob_key, answer.sidecar_key, answer.sidecar_format,
                           answer.sidecar_language, answer.title, owner_id=owner_id,
                           duration_s=answer.duration_seconds)

    async def update(self, video_id: uuid.UUID, fence: int, state: str = "", **facts: Any) -> None:
        """Record facts (and a state) found by the run holding ``fence``; FAILED_PRECONDITION ``RUN_SUPERSEDED``
        when a later run or a cancel updated the video already, NOT_FOUND once it was deleted."""
        await self._stub.UpdateVideoProcessing(processing_request(video_id, fence, state, **facts))


def relay_handlers(stub: Any) -> dict[str, Handler]:
    """The pipeline outbox's handlers (the pipeline server and every worker run a relay)."""

    async def update_video(payload: bytes) -> None:
        request = pb.UpdateVideoProcessingRequest.FromString(payload)
        try:
            await stub.UpdateVideoProcessing(request)
        except NotFound:
            log.info("%s is gone: its processing update is dropped", request.video)
        except FailedPrecondition as exc:
            if exc.reason != "RUN_SUPERSEDED":
                raise
            log.info("%s: processing update superseded by a newer one, dropped", request.video)

    return {VIDEO_PROCESSING_TOPIC: update_video}
