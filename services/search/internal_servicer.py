"""``clipmind.search.internal.v1.SearchInternalService``: the pipeline writes a video's index here."""

from __future__ import annotations

import math
import uuid
from typing import Any

import grpc.aio
import numpy as np
from clipmind.search.internal.v1 import search_internal_service_pb2 as pb
from clipmind.search.internal.v1 import search_internal_service_pb2_grpc as pb_grpc

from services.common.convert import from_timestamp
from services.common.errors import invalid_field
from services.common.grpc_server import Context
from services.common.names import clip_name, parse_clip_name, parse_user_name, parse_video_name, video_name
from services.search.clip_store import ClipStore
from services.search.ports import QueryCache
from services.search.records import Clip, Keyframe, Segment, VideoFacts, VideoIndex, scene_keyframe

# Vector sizes of the collections (CLIP ViT-B-32 image vectors, all-MiniLM-L6-v2 sentence vectors).
VISUAL_DIMS, TRANSCRIPT_DIMS = 512, 384


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid_field(field, "not a UUID") from None


def _vector(values: Any, dims: int, field: str) -> np.ndarray:
    if len(values) != dims:
        raise invalid_field(field, f"has {len(values)} values, the collection holds {dims}")
    return np.asarray(values, dtype=np.float32)


# How far (seconds) a keyframe's stretch may reach past its scene's bounds: times are rounded on the way.
SPAN_SLACK_S = 1e-3
MAX_SPANS_PER_CALL = 1000


def _keyframe(clip: Clip, k: pb.IndexedKeyframe, field: str) -> tuple[Keyframe, np.ndarray | None]:
    """One keyframe of ``clip`` and its vector (None without one), checked: its stretch of the scene lies
    within the scene."""
    keyframe_id = _uuid(k.id, f"{field}.id")
    if k.index < 0:
        raise invalid_field(f"{field}.index", "must not be negative")
    if not math.isfinite(k.time_seconds) or k.time_seconds < 0:
        raise invalid_field(f"{field}.time_seconds", "must be a time in the video")
    if k.end_seconds <= k.start_seconds:
        raise invalid_field(f"{field}.end_seconds", "must be after start_seconds")
    if (k.start_seconds < clip.start_s - SPAN_SLACK_S or k.start_seconds >= clip.end_s
            or k.end_seconds > clip.end_s + SPAN_SLACK_S or k.end_seconds <= clip.start_s):
        raise invalid_field(f"{field}.start_seconds", f"the stretch {k.start_seconds:.3f}-{k.end_seconds:.3f} s "
                            f"is not within its scene ({clip.start_s:.3f}-{clip.end_s:.3f} s)")
    vector = _vector(k.visual_embedding, VISUAL_DIMS, f"{field}.visual_embedding") if k.visual_embedding else None
    return Keyframe(keyframe_id, clip.id, k.index, k.time_seconds, max(k.start_seconds, clip.start_s),
                    min(k.end_seconds, clip.end_s), k.thumbnail_key), vector


def index_from_pb(request: pb.ReplaceVideoIndexRequest) -> tuple[uuid.UUID, uuid.UUID, VideoIndex]:
    """The video, its owner and its index from the request, every id, reference and vector size checked. The
    owner is required: an index without one could only be written as nobody's, invisible to the user whose
    video it is."""
    video_id = parse_video_name(request.video, "video")
    owner = parse_user_name(request.owner, "owner")
    clips, visual = [], []
    seen: set[object] = set()

    def once(key: object, field: str) -> None:  # the database's unique keys, checked before they fail there
        if key in seen:
            raise invalid_field(field, "repeated in this request")
        seen.add(key)

    keyframes: list[Keyframe] = []
    for i, c in enumerate(request.clips):
        clip_id = _uuid(c.id, f"clips[{i}].id")
        once(("clip", clip_id), f"clips[{i}].id")
        once(("clip index", c.index), f"clips[{i}].index")
        if c.end_seconds <= c.start_seconds:
            raise invalid_field(f"clips[{i}].end_seconds", "must be after start_seconds")
        clip = Clip(clip_id, video_id, c.index, c.start_seconds, c.end_seconds, c.thumbnail_key)
        clips.append(clip)
        if c.keyframes and c.visual_embedding:
            raise invalid_field(f"clips[{i}].visual_embedding", "not set together with keyframes")
        if not c.keyframes:  # one keyframe standing for the whole scene, under the clip's id
            keyframes.append(scene_keyframe(clip))
            once(("keyframe", clip_id), f"clips[{i}].id")
            if c.visual_embedding:
                visual.append((clip_id, _vector(c.visual_embedding, VISUAL_DIMS, f"clips[{i}].visual_embedding")))
        for j, k in enumerate(c.keyframes):
            keyframe, vector = _keyframe(clip, k, f"clips[{i}].keyframes[{j}]")
            once(("keyframe", keyframe.id), f"clips[{i}].keyframes[{j}].id")
            once(("keyframe index", clip_id, k.index), f"clips[{i}].keyframes[{j}].index")
            keyframes.append(keyframe)
            if vector is not None:
                visual.append((keyframe.id, vector))
    clip_ids = {c.id for c in clips}
    segments, vectors = [], []
    for i, g in enumerate(request.segments):
        seg_id, clip_id = _uuid(g.id, f"segments[{i}].id"), _uuid(g.clip_id, f"segments[{i}].clip_id")
        once(("segment", seg_id), f"segments[{i}].id")
        once(("segment index", g.index), f"segments[{i}].index")
        if clip_id not in clip_ids:
            raise invalid_field(f"segments[{i}].clip_id", "not one of the request's clips")
        segments.append(Segment(seg_id, video_id, clip_id, g.index, g.start_seconds, g.end_seconds, g.text, g.source))
        if g.embedding:
            vectors.append((seg_id, _vector(g.embedding, TRANSCRIPT_DIMS, f"segments[{i}].embedding")))
    if (vectors and not request.transcript_model) or (visual and not request.visual_model):
        raise invalid_field("transcript_model" if vectors and not request.transcript_model else "visual_model",
                            "required with embeddings", reason="REQUIRED_FIELD")
    return video_id, owner, VideoIndex(clips, segments, vectors, transcript_model=request.transcript_model,
                                visual_vectors=visual, visual_model=request.visual_model, keyframes=keyframes)


_FACT_STATES = frozenset({"PENDING", "PROCESSING", "READY", "FAILED"})
MAX_TITLE_CHARS = 10_000


def facts_from_pb(facts: pb.VideoFacts) -> VideoFacts:
    """The facts of the request, checked. The owner may be missing: facts are delivered from ingest's outbox,
    which still holds messages written before ownership (and an ingest not yet upgraded sends none); refusing
    them would block its outbox for good. Such facts keep the owner the row has (the index's, which the
    pipeline always sends), or none for a new row; they never clear one. A malformed owner is refused."""
    video_id = parse_video_name(facts.video, "facts.video")
    if facts.revision < 1:
        raise invalid_field("facts.revision", "must be 1 or more")
    if facts.state not in _FACT_STATES:
        raise invalid_field("facts.state", "one of " + ", ".join(sorted(_FACT_STATES)))
    if facts.duration_seconds < 0:
        raise invalid_field("facts.duration_seconds", "must not be negative")
    if len(facts.title) > MAX_TITLE_CHARS:
        raise invalid_field("facts.title", f"longer than {MAX_TITLE_CHARS} characters")
    owner = parse_user_name(facts.owner, "facts.owner") if facts.owner else None
    return VideoFacts(video_id, facts.revision, facts.title, facts.blob_key, facts.state, facts.duration_seconds,
                      from_timestamp(facts, "create_time"), owner)


class SearchInternalServicer(pb_grpc.SearchInternalServiceServicer):
    """Writes of the index and its read model. Each write that can change what a user finds (an index, facts such
    as READY, a deletion) empties that user's cached searches (``cache``)."""

    def __init__(self, clips: ClipStore, cache: QueryCache | None = None) -> None:
        self._clips = clips
        self._cache = cache

    async def _changed(self, video_id: uuid.UUID, owner: uuid.UUID | None = None) -> None:
        if self._cache is None:
            return
        owner = owner or await self._clips.video_owner(video_id)
        if owner is not None:
            await self._cache.invalidate(owner)

    async def ReplaceVideoIndex(
        self, request: pb.ReplaceVideoIndexRequest, context: Context
    ) -> pb.ReplaceVideoIndexResponse:
        video_id, owner, index = index_from_pb(request)
        await self._clips.replace_index(video_id, request.fence, index, owner=owner)
        await self._changed(video_id, owner)
        return pb.ReplaceVideoIndexResponse(clip_count=len(index.clips), segment_count=len(index.segments),
                                            vector_count=len(index.vectors) + len(index.visual_vectors))

    async def DeleteVideoIndex(self, request: pb.DeleteVideoIndexRequest,
                               context: Context) -> pb.DeleteVideoIndexResponse:
        video_id = parse_video_name(request.video, "video")
        deleted = await self._clips.delete_index(video_id)
        await self._changed(video_id)
        return pb.DeleteVideoIndexResponse(deleted_clip_count=deleted)

    async def UpsertVideoFacts(self, request: pb.UpsertVideoFactsRequest,
                               context: Context) -> pb.UpsertVideoFactsResponse:
        if not request.HasField("facts"):
            raise invalid_field("facts", "required", reason="REQUIRED_FIELD")
        facts = facts_from_pb(request.facts)
        applied = await self._clips.upsert_facts(facts)
        if applied:
            await self._changed(facts.video_id, facts.owner_id)
        return pb.UpsertVideoFactsResponse(applied=applied)

    async def GetClipSpans(self, request: pb.GetClipSpansRequest, context: Context) -> pb.GetClipSpansResponse:
        if len(request.clips) > MAX_SPANS_PER_CALL:
            raise invalid_field("clips", f"at most {MAX_SPANS_PER_CALL} per call")
        clip_ids = [parse_clip_name(name, f"clips[{i}]") for i, name in enumerate(request.clips)]
        owner = parse_user_name(request.owner, "owner") if request.owner else None
        found = await self._clips.get_many(clip_ids, owner=owner)
        return pb.GetClipSpansResponse(spans=[
            pb.ClipSpan(clip=clip_name(c.id), video=video_name(c.video_id), start_seconds=c.start_s,
                        end_seconds=c.end_s) for c in found.values()])


def register(server: grpc.aio.Server, servicer: SearchInternalServicer) -> str:
    pb_grpc.add_SearchInternalServiceServicer_to_server(servicer, server)
    return pb.DESCRIPTOR.services_by_name["SearchInternalService"].full_name
