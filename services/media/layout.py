"""Where a video's blobs live in the blob store: one place for the keys, so the writer (ingest, the pipeline)
and the deleter agree. Everything of a video is under ``video_prefix``:

    videos/{id}/source{ext}          the uploaded file (``ext`` from ``media_types.container_extension``)
    videos/{id}/subtitles{ext}       a sidecar subtitle file sent with the upload
    videos/{id}/thumbnail.jpg        the poster frame
    videos/{id}/scenes/{scene:04d}-{frame:02d}.jpg   keyframe ``frame`` of scene ``scene`` (both from 0)

A compilation's rendered file is ``compilations/{id}/output.mp4`` (under ``compilation_prefix``).

These are blob keys, not resource names: a gRPC message names the video ``videos/{id}`` (services.common.names).
"""

from __future__ import annotations

import uuid


def video_prefix(video_id: uuid.UUID) -> str:
    """The prefix of every blob of the video (with its trailing ``/``: deleting it removes exactly the video's)."""
    return f"videos/{video_id}/"


def source_key(video_id: uuid.UUID, extension: str) -> str:
    """The stored upload; ``extension`` with its dot (``.mp4``), decided from what ffprobe found."""
    return f"{video_prefix(video_id)}source{extension}"


def subtitles_key(video_id: uuid.UUID, extension: str) -> str:
    """The sidecar subtitle file sent with the upload; ``extension`` with its dot (``.srt``, ``.vtt``)."""
    return f"{video_prefix(video_id)}subtitles{extension}"


def thumbnail_key(video_id: uuid.UUID) -> str:
    """The video's poster frame (JPEG)."""
    return f"{video_prefix(video_id)}thumbnail.jpg"


def keyframe_key(video_id: uuid.UUID, scene_index: int, frame_index: int) -> str:
    """Keyframe ``frame_index`` (JPEG; a scene has one per few seconds) of scene ``scene_index`` of the video."""
    if scene_index < 0 or frame_index < 0:
        raise ValueError(f"scene and frame indices must not be negative, got {scene_index}, {frame_index}")
    return f"{video_prefix(video_id)}scenes/{scene_index:04d}-{frame_index:02d}.jpg"


def compilation_prefix(compilation_id: uuid.UUID) -> str:
    """The prefix of every blob of a compilation (with its trailing ``/``)."""
    return f"compilations/{compilation_id}/"


def compilation_key(compilation_id: uuid.UUID) -> str:
    """A compilation's rendered file (MP4)."""
    return f"{compilation_prefix(compilation_id)}output.mp4"
