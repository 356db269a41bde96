"""Ingest's records: videos and resumable uploads as its database holds them, free of gRPC and SQL types.

Enumerations are stored as the proto enum value names without their prefix (``READY`` for
``Video.State.STATE_READY``); servicers map them to and from the generated enums.

Every upload and video has an owner (``owner_id``, a user id): the uploader. Rows from before ownership have
``UNOWNED``, the nil UUID, which no user has (it is the system's identity), so only administrators see them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.common.ids import job_id_for

VIDEO_STATES = ("PENDING", "PROCESSING", "READY", "FAILED")
# The owner of rows made before ownership (migration 0003): the nil UUID, seen by administrators only.
UNOWNED = uuid.UUID(int=0)


@dataclass
class Video:
    id: uuid.UUID
    blob_key: str
    state: str
    owner_id: uuid.UUID = UNOWNED  # the user who uploaded it; the domain always sets it
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
    transcript_language: str = ""  # "en", "eng", …; "" = unknown or no transcript
    generation: int = 1  # processing generation: its job is job_id_for(id, generation)
    processing_fence: int = 0  # fence of the last processing update accepted (UpdateVideoProcessing)
    revision: int = 0  # +1 on every change: the search service's copy keeps the newest
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def job_id(self) -> uuid.UUID:
        """The video's latest processing job (named by ingest, created under this id by the pipeline)."""
        return job_id_for(self.id, self.generation)


@dataclass
class Upload:
    id: uuid.UUID
    state: str
    expire_time: datetime
    owner_id: uuid.UUID = UNOWNED  # the user who opened it; their video, once completed
    filename: str = ""
    content_type: str = ""
    size_bytes: int = 0
    committed_size: int = 0
    video_id: uuid.UUID | None = None
    create_time: datetime | None = None
