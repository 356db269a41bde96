"""Plain records shared by the services: what the database holds, free of gRPC and SQL types.

Enumerations are stored as the proto enum value names without their prefix (``READY`` for
``Video.State.STATE_READY``); servicers map them to and from the generated enums.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

TERMINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
STAGES = ("PROBE", "THUMBNAIL", "SCENES", "TRANSCRIPT", "EMBED", "INDEX")


@dataclass
class Video:
    id: uuid.UUID
    blob_key: str
    state: str
    title: str = ""
    description: str = ""
    filename: str = ""
    content_type: str = ""
    size_bytes: int = 0
    duration_s: float = 0.0
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0
    video_codec: str = ""
    audio_codec: str = ""
    has_audio: bool = False
    thumbnail_key: str = ""
    scene_count: int = 0
    transcript_source: str = "NONE"
    sidecar_key: str = ""
    sidecar_format: str = ""
    sidecar_language: str = ""
    failure_reason: str = ""
    transcript_model: str = ""  # model id of the video's transcript vectors ("" = none)
    visual_model: str = ""  # model id of the video's visual vectors ("" = none)
    create_time: datetime | None = None
    update_time: datetime | None = None
    job_id: uuid.UUID | None = None  # latest processing job


@dataclass
class Upload:
    id: uuid.UUID
    state: str
    expire_time: datetime
    filename: str = ""
    content_type: str = ""
    size_bytes: int = 0
    committed_size: int = 0
    video_id: uuid.UUID | None = None
    create_time: datetime | None = None


def queue_key(job_id: uuid.UUID, generation: int = 0) -> str:
    """The queue (arq job) id of one enqueue of a job: ``<job id>:<generation>``. The queue runs one entry
    per id, so the same key enqueued twice runs once; a retry or a re-queue takes a new generation."""
    return f"{job_id}:{generation}"


@dataclass
class Job:
    id: uuid.UUID
    video_id: uuid.UUID
    state: str
    stage: str = "STAGE_UNSPECIFIED"
    progress: float = 0.0
    attempt: int = 0
    max_attempts: int = 3
    failure_reason: str = ""
    queue_key: str = ""  # the arq job id it was last enqueued under (services.common.queue.queue_key)
    run_id: uuid.UUID | None = None  # fencing token of the run that owns the job now (None: no run)
    lease_expire_time: datetime | None = None  # the owning run's lease; its heartbeat pushes it forward
    worker: str = ""  # who runs (or last ran) it: host:pid
    failure_code: str = ""  # stable reason of the failure (WORKER_LOST, UNREADABLE_MEDIA, INTERNAL, ...)
    fence: int = 0  # grows with every claim: the current run's writes to other services carry it
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES


@dataclass(frozen=True)
class Run:
    """One attempt at a job by one worker: ``run_id`` fences every write it makes."""

    job_id: uuid.UUID
    video_id: uuid.UUID
    run_id: uuid.UUID
    attempt: int
    max_attempts: int
    fence: int = 0  # larger than any earlier run's: fences the run's writes in other services


@dataclass
class JobEvent:
    job_id: uuid.UUID
    sequence: int
    stage: str
    stage_state: str
    progress: float
    message: str
    job_state: str
    create_time: datetime | None = None


@dataclass
class DeadLetter:
    id: uuid.UUID
    job_id: uuid.UUID
    video_id: uuid.UUID
    failure_reason: str
    attempts: int
    failure_code: str = ""
    create_time: datetime | None = None


@dataclass
class Clip:
    id: uuid.UUID
    video_id: uuid.UUID
    idx: int
    start_s: float
    end_s: float
    thumbnail_key: str = ""
    video_title: str = ""
    video_blob_key: str = ""
    transcript: str = ""


@dataclass
class Segment:
    id: uuid.UUID
    video_id: uuid.UUID
    clip_id: uuid.UUID
    idx: int
    start_s: float
    end_s: float
    text: str
    source: str


@dataclass
class ProcessedVideo:
    """Everything processing found for one video, written to the search service's index in one atomic step."""

    clips: list[Clip]
    segments: list[Segment]
    vectors: list[tuple[uuid.UUID, np.ndarray]] = field(default_factory=list)  # (segment id, vector)
    transcript_source: str = "NONE"
    transcript_model: str = ""
    visual_vectors: list[tuple[uuid.UUID, np.ndarray]] = field(default_factory=list)  # (clip id, vector)
    visual_model: str = ""


def derived_id(video_id: uuid.UUID, kind: str, idx: int) -> uuid.UUID:
    """Stable id for a video's n-th clip/segment, so re-running a job rewrites the same rows."""
    return uuid.uuid5(video_id, f"{kind}/{idx}")


def job_id_for(video_id: uuid.UUID, generation: int) -> uuid.UUID:
    """The processing job of a video's ``generation``: derived, so submitting it twice finds the first."""
    return derived_id(video_id, "job", generation)
