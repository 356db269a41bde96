"""The search service's records: the index of a video (clips, transcript segments, vectors) and its copy of the
video facts that ingest publishes; free of gRPC and SQL types."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np


@dataclass
class Clip:
    """One scene of a video, with what a search result shows of its video."""

    id: uuid.UUID
    video_id: uuid.UUID
    idx: int
    start_s: float
    end_s: float
    thumbnail_key: str = ""
    video_title: str = ""
    video_blob_key: str = ""
    transcript: str = ""


@dataclass(frozen=True)
class Keyframe:
    """One frame of a clip's scene (a scene has one per few seconds), standing for ``[start_s, end_s)`` of it; its
    CLIP vector, if any, is ``VideoIndex.visual_vectors``' entry under ``id``."""

    id: uuid.UUID
    clip_id: uuid.UUID
    idx: int
    time_s: float
    start_s: float
    end_s: float
    thumbnail_key: str = ""


@dataclass
class Segment:
    """One transcript cue, in the clip that holds its midpoint."""

    id: uuid.UUID
    video_id: uuid.UUID
    clip_id: uuid.UUID
    idx: int
    start_s: float
    end_s: float
    text: str
    source: str


@dataclass
class VideoIndex:
    """Everything indexed for one video; replaced as a whole (``SearchInternalService.ReplaceVideoIndex``)."""

    clips: list[Clip]
    segments: list[Segment]
    vectors: list[tuple[uuid.UUID, np.ndarray]] = field(default_factory=list)  # (segment id, vector)
    transcript_model: str = ""
    visual_vectors: list[tuple[uuid.UUID, np.ndarray]] = field(default_factory=list)  # (keyframe id, vector)
    visual_model: str = ""
    keyframes: list[Keyframe] = field(default_factory=list)
    """Every clip's keyframes; a clip given none has one standing for its whole scene (``scene_keyframe``)."""

    def __post_init__(self) -> None:
        framed = {k.clip_id for k in self.keyframes}
        self.keyframes = [*self.keyframes, *(scene_keyframe(c) for c in self.clips if c.id not in framed)]


def scene_keyframe(clip: Clip) -> Keyframe:
    """A clip's one keyframe when it has no others (indexed before scenes had several, or sent so): its
    thumbnail, standing for the whole scene, under the clip's own id (a vector for it is under that id too)."""
    return Keyframe(clip.id, clip.id, 0, (clip.start_s + clip.end_s) / 2, clip.start_s, clip.end_s,
                    clip.thumbnail_key)


@dataclass(frozen=True)
class VideoFacts:
    """The search service's copy of what ingest knows of a video (filters and display), at ``revision``."""

    video_id: uuid.UUID
    revision: int
    title: str
    blob_key: str
    state: str
    duration_s: float
    create_time: datetime | None
    owner_id: uuid.UUID | None = None  # None: not sent (an ingest from before ownership); the held one stays


@dataclass(frozen=True)
class RankedResult:
    """One result of a logged search, at its rank."""

    clip_id: uuid.UUID
    video_id: uuid.UUID
    rank: int
    score: float


@dataclass(frozen=True)
class SearchRecord:
    """One search as it was answered, for the search log (analytics owns it)."""

    search_id: uuid.UUID
    query: str
    image_query: bool
    result_count: int
    latency_ms: float
    search_time: datetime
    user_id: uuid.UUID  # who searched: the search log is theirs
    page_offset: int = 0
    results: Sequence[RankedResult] = field(default_factory=tuple)
    fusion: str = ""  # how the signals were fused ("weighted", "rrf")
    video_ids: tuple[uuid.UUID, ...] = ()  # the filters (empty: not restricted)
    min_duration_s: float = 0.0
    max_duration_s: float = 0.0
    created_after: datetime | None = None
    created_before: datetime | None = None
