"""The search service's index as the pipeline writes it: ``SearchInternalService.ReplaceVideoIndex``."""

from __future__ import annotations

import uuid
from typing import Any

from clipmind.search.internal.v1 import search_internal_service_pb2 as pb

from services.common.names import user_name, video_name
from services.pipeline.records import ProcessedVideo


def index_request(
    video_id: uuid.UUID, fence: int, result: ProcessedVideo, *, owner_id: uuid.UUID
) -> pb.ReplaceVideoIndexRequest:
    """The ReplaceVideoIndex request of a run's result; ``owner_id`` is the user whose searches find the video
    (search refuses an index without an owner)."""
    visual = {clip_id: vec for clip_id, vec in result.visual_vectors}
    transcript = {seg_id: vec for seg_id, vec in result.vectors}
    request = pb.ReplaceVideoIndexRequest(
        video=video_name(video_id), fence=fence, owner=user_name(owner_id),
        transcript_model=result.transcript_model if transcript else "",
        visual_model=result.visual_model if visual else "",
    )
    for c in result.clips:
        clip = request.clips.add(id=str(c.id), index=c.idx, start_seconds=c.start_s, end_seconds=c.end_s,
                                 thumbnail_key=c.thumbnail_key)
        for k in c.keyframes:
            frame = clip.keyframes.add(id=str(k.id), index=k.idx, time_seconds=k.time_s, start_seconds=k.start_s,
                                       end_seconds=k.end_s, thumbnail_key=k.blob_key)
            if k.id in visual:
                frame.visual_embedding.extend(visual[k.id].tolist())
    for g in result.segments:
        segment = request.segments.add(id=str(g.id), clip_id=str(g.clip_id), index=g.idx, start_seconds=g.start_s,
                                       end_seconds=g.end_s, text=g.text, source=g.source)
        if g.id in transcript:
            segment.embedding.extend(transcript[g.id].tolist())
    return request


class SearchIndexClient:
    """Writes a video's index through the search service (a guarded stub from ``InternalChannels``)."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    async def replace(self, video_id: uuid.UUID, fence: int, result: ProcessedVideo, *, owner_id: uuid.UUID) -> None:
        await self._stub.ReplaceVideoIndex(index_request(video_id, fence, result, owner_id=owner_id))
