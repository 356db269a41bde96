"""The pipeline's records: jobs, runs, events, dead letters, and what processing finds for a video; free of
gRPC and SQL types.

Enumerations are stored as the proto enum value names without their prefix (``RUNNING`` for
``Job.State.STATE_RUNNING``); servicers map them to and from the generated enums.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

TERMINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
# The owner of jobs made before jobs had owners (migration 0002): no user has this id, so only administrators
# (and the system) see them.
UNOWNED = uuid.UUID(int=0)
STAGES = ("PROBE", "THUMBNAIL", "SCENES", "TRANSCRIPT", "EMBED", "INDEX")


@dataclass
class Job:
    id: uuid.UUID
    video_id: uuid.UUID | None  # the video it processes; None for a compilation's render job
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
    # The user whose video this job processes (``users/{owner_id}``): the only user who sees and changes it.
    # Keyword-only so the positional fields above keep their order; UNOWNED is a job from before owners.
    owner_id: uuid.UUID = field(default=UNOWNED, kw_only=True)
    priority: str = field(default="STANDARD", kw_only=True)  # HIGH, STANDARD or BATCH: its queue entries' order
    compilation_id: uuid.UUID | None = field(default=None, kw_only=True)  # the compilation a render job renders

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES


@dataclass(frozen=True)
class Run:
    """One attempt at a job by one worker: ``run_id`` fences every write it makes."""

    job_id: uuid.UUID
    video_id: uuid.UUID  # the video it processes (a render run: its compilation's id)
    run_id: uuid.UUID
    attempt: int
    max_attempts: int
    fence: int = 0  # larger than any earlier run's: fences the run's writes in other services
    # The job's owner: the index the run writes is that user's (ReplaceVideoIndexRequest.owner). Required, so a
    # run can never write an index that nobody (or the wrong user) owns.
    owner_id: uuid.UUID = field(kw_only=True)
    priority: str = field(default="STANDARD", kw_only=True)  # the job's: its retries are enqueued with it
    compilation: bool = field(default=False, kw_only=True)  # a compilation's render (``video_id`` is its id)


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
class AttemptFailure:
    """Why one attempt at a job failed (a dead letter's history)."""

    job_id: uuid.UUID
    attempt: int
    failure_code: str
    message: str
    worker: str = ""
    create_time: datetime | None = None


@dataclass
class DeadLetter:
    id: uuid.UUID
    job_id: uuid.UUID
    video_id: uuid.UUID | None  # None for a compilation's render job
    failure_reason: str
    attempts: int
    failure_code: str = ""
    create_time: datetime | None = None
    history: list[AttemptFailure] = field(default_factory=list)  # every failed attempt, the first first


@dataclass(frozen=True)
class VideoSource:
    """What processing needs of a stored video, as ingest answers ``GetVideoSource``."""

    video_id: uuid.UUID
    blob_key: str
    sidecar_key: str = ""
    sidecar_format: str = ""
    sidecar_language: str = ""
    title: str = ""
    owner_id: uuid.UUID | None = None  # the video's owner as ingest records it (None: ingest did not say)
    duration_s: float = 0.0  # as validated at upload (0: unknown)


@dataclass(frozen=True)
class Keyframe:
    """One frame of a scene (one per few seconds of it), standing for ``[start_s, end_s)`` of the scene."""

    id: uuid.UUID
    idx: int
    time_s: float
    start_s: float
    end_s: float
    blob_key: str


@dataclass
class Clip:
    id: uuid.UUID
    video_id: uuid.UUID
    idx: int
    start_s: float
    end_s: float
    thumbnail_key: str = ""  # the representative keyframe's (the one at the scene's middle)
    keyframes: list[Keyframe] = field(default_factory=list)


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
    """Everything processing found for one video, written to the search service's index in one atomic step
    (``SearchInternalService.ReplaceVideoIndex``)."""

    clips: list[Clip]
    segments: list[Segment]
    vectors: list[tuple[uuid.UUID, np.ndarray]] = field(default_factory=list)  # (segment id, vector)
    transcript_source: str = "NONE"
    transcript_model: str = ""
    visual_vectors: list[tuple[uuid.UUID, np.ndarray]] = field(default_factory=list)  # (keyframe id, vector)
    visual_model: str = ""


@dataclass(frozen=True)
class CompilationPiece:
    """A span of one of the owner's videos, in the compilation's order (``clip_id``: the clip it was cut from, when
    it was asked for as a clip)."""

    video_id: uuid.UUID
    start_s: float
    end_s: float
    clip_id: uuid.UUID | None = None


@dataclass(frozen=True)
class ClipRequest:
    """A clip asked for in a compilation, less ``trim_start_s`` / ``trim_end_s`` seconds at its ends."""

    clip_id: uuid.UUID
    trim_start_s: float = 0.0
    trim_end_s: float = 0.0


@dataclass(frozen=True)
class ClipSpan:
    """Where a clip is in its video (the search service's record)."""

    clip_id: uuid.UUID
    video_id: uuid.UUID
    start_s: float
    end_s: float


@dataclass(frozen=True)
class CompilationOptions:
    crossfade_s: float = 0.0
    title_text: str = ""
    title_s: float = 3.0
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0
    width: int = 0  # 0 x 0: the sources' own size when they share it
    height: int = 0


@dataclass
class Compilation:
    id: uuid.UUID
    owner_id: uuid.UUID
    pieces: list[CompilationPiece]
    options: CompilationOptions
    job_id: uuid.UUID
    state: str = "QUEUED"  # its job's state: QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED
    failure_reason: str = ""
    output_key: str = ""
    duration_s: float = 0.0
    size_bytes: int = 0
    render_method: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None
