"""Ids that two services derive on their own and must agree on (no lookup between them)."""

from __future__ import annotations

import uuid


def derived_id(video_id: uuid.UUID, kind: str, idx: int) -> uuid.UUID:
    """Stable id for a video's n-th clip/segment/job, so doing the same work again finds the same rows."""
    return uuid.uuid5(video_id, f"{kind}/{idx}")


def keyframe_id(video_id: uuid.UUID, scene_index: int, frame_index: int) -> uuid.UUID:
    """Stable id of keyframe ``frame_index`` of a video's scene ``scene_index``."""
    return uuid.uuid5(video_id, f"keyframe/{scene_index}/{frame_index}")


def job_id_for(video_id: uuid.UUID, generation: int) -> uuid.UUID:
    """The processing job of a video's ``generation``: ingest names it, the pipeline creates it under this id,
    so a repeated submission finds the first and ingest shows the job without asking the pipeline."""
    return derived_id(video_id, "job", generation)
