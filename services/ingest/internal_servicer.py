"""``clipmind.ingest.internal.v1.IngestInternalService``: the pipeline reads a video's source and records what
processing found (thin conversion to ``VideoStore``). Only services call it, as the system: it reads every
video, whoever owns it, and names the owner so that the video's job, clips and vectors are theirs too."""

from __future__ import annotations

import math
from typing import Any

import grpc.aio
from clipmind.ingest.internal.v1 import ingest_internal_service_pb2 as pb
from clipmind.ingest.internal.v1 import ingest_internal_service_pb2_grpc as pb_grpc

from services.common.errors import invalid_field
from services.common.grpc_server import Context
from services.common.names import parse_video_name, user_name, video_name
from services.common.outbox import OutboxRelay
from services.ingest.store import VideoStore

# Request field -> video column, for the facts UpdateVideoProcessing may carry.
_FACT_FIELDS = {
    "duration_seconds": "duration_s", "width": "width", "height": "height", "frame_rate": "frame_rate",
    "video_codec": "video_codec", "audio_codec": "audio_codec", "has_audio": "has_audio",
    "thumbnail_key": "thumbnail_key", "scene_count": "scene_count", "transcript_source": "transcript_source",
    "transcript_model": "transcript_model", "visual_model": "visual_model",
    "transcript_language": "transcript_language",
}
_TRANSCRIPT_SOURCES = frozenset({"NONE", "SIDECAR", "SUBTITLE_TRACK", "SPEECH_RECOGNITION"})
MAX_REASON_CHARS = 1000
MAX_LANGUAGE_CHARS = 35  # the longest language tag worth keeping (BCP 47 allows 35 characters for the common forms)
# How long READY waits for search to have the video's new facts before it answers: the pipeline
# records a job SUCCEEDED only after its video is READY here, so a client that sees the job succeed finds the
# video searchable. Longer (search away) the facts follow when search is back.
FACTS_WAIT_S = 2.0


def processing_update(request: pb.UpdateVideoProcessingRequest) -> tuple[str, str, dict[str, Any]]:
    """(state, failure reason, facts) of the request, each checked."""
    state = pb.ProcessingState.Name(request.state).removeprefix("PROCESSING_STATE_")
    state = "" if state == "UNSPECIFIED" else state
    if request.fence < 0:
        raise invalid_field("fence", "must not be negative")
    if len(request.failure_reason) > MAX_REASON_CHARS:
        raise invalid_field("failure_reason", f"longer than {MAX_REASON_CHARS} characters")
    facts = {column: getattr(request, name) for name, column in _FACT_FIELDS.items() if request.HasField(name)}  # type: ignore[arg-type]
    for name, column in (("duration_seconds", "duration_s"), ("frame_rate", "frame_rate"), ("width", "width"),
                         ("height", "height"), ("scene_count", "scene_count")):
        value = facts.get(column, 0)
        if not math.isfinite(value) or value < 0:
            raise invalid_field(name, "must be a finite number, not negative")
    if len(request.transcript_language) > MAX_LANGUAGE_CHARS:
        raise invalid_field("transcript_language", f"longer than {MAX_LANGUAGE_CHARS} characters")
    if request.HasField("transcript_source") and request.transcript_source not in _TRANSCRIPT_SOURCES:
        raise invalid_field("transcript_source", "one of " + ", ".join(sorted(_TRANSCRIPT_SOURCES)))
    return state, request.failure_reason, facts


class IngestInternalServicer(pb_grpc.IngestInternalServiceServicer):
    def __init__(self, videos: VideoStore, relay: OutboxRelay, *, facts_wait_s: float = FACTS_WAIT_S) -> None:
        self._videos = videos
        self._relay = relay
        self._facts_wait_s = facts_wait_s

    async def GetVideoSource(self, request: pb.GetVideoSourceRequest, context: Context) -> pb.VideoSource:
        video = await self._videos.get(parse_video_name(request.video, "video"))
        return pb.VideoSource(video=video_name(video.id), blob_key=video.blob_key, sidecar_key=video.sidecar_key,
                              sidecar_format=video.sidecar_format, sidecar_language=video.sidecar_language,
                              title=video.title, owner=user_name(video.owner_id),
                              duration_seconds=video.duration_s)

    async def UpdateVideoProcessing(
        self, request: pb.UpdateVideoProcessingRequest, context: Context
    ) -> pb.UpdateVideoProcessingResponse:
        video_id = parse_video_name(request.video, "video")
        state, reason, facts = processing_update(request)
        after, fact = await self._videos.apply_processing(video_id, request.fence, state=state,
                                                          failure_reason=reason, facts=facts)
        if fact is not None and state == "READY":  # the one change a client must see in search at once
            await self._relay.deliver_soon(fact, self._facts_wait_s)
        elif fact is not None:
            self._relay.wake()
        return pb.UpdateVideoProcessingResponse(state=after, changed=fact is not None)


def register(server: grpc.aio.Server, servicer: IngestInternalServicer) -> str:
    pb_grpc.add_IngestInternalServiceServicer_to_server(servicer, server)
    return pb.DESCRIPTOR.services_by_name["IngestInternalService"].full_name
