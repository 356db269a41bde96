"""The processing of one video, stage by stage: probe → thumbnail → scenes → transcript → embed → index.

Each stage reports STARTED/COMPLETED (or SKIPPED) events through the job reporter. Every write is keyed
by the video (blob keys, derived row ids) and the final index step replaces the video's clips, segments
and vectors in one transaction, so re-running a job leaves the same rows and never duplicates.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.blobstore import BlobStore
from services.common.errors import ClipMindError, NotFound
from services.common.inference import TextEmbedder
from services.common.records import Clip, Job, ProcessedVideo, Segment, Video, derived_id
from services.common.store import JobStore, VideoStore
from services.pipeline.media import MediaInfo, extract_frame, probe
from services.pipeline.reporter import JobCancelled, JobReporter
from services.pipeline.scenes import Scene, detect_scenes_async
from services.pipeline.subtitles import Cue, clip_cues, extract_text_track, parse_subtitles, pick_text_track

log = logging.getLogger(__name__)

# Share of the whole job's progress taken by each stage, in order.
STAGE_WEIGHTS = {
    "PROBE": 0.05, "THUMBNAIL": 0.05, "SCENES": 0.40, "TRANSCRIPT": 0.10, "EMBED": 0.30, "INDEX": 0.10,
}


@dataclass(frozen=True)
class ProcessorConfig:
    scene_threshold: float = 27.0
    min_scene_s: float = 0.6


def assign_segments(video_id: uuid.UUID, cues: list[Cue], clips: list[Clip], source: str) -> list[Segment]:
    """Each cue becomes a segment of the clip that holds its midpoint."""
    segments = []
    for idx, cue in enumerate(cues):
        mid = (cue.start_s + cue.end_s) / 2
        clip = next((c for c in clips if c.start_s <= mid < c.end_s), clips[-1])
        segments.append(
            Segment(derived_id(video_id, "segment", idx), video_id, clip.id, idx, cue.start_s, cue.end_s,
                    cue.text, source)
        )
    return segments


class VideoProcessor:
    def __init__(
        self, videos: VideoStore, jobs: JobStore, reporter: JobReporter, blobs: BlobStore,
        embedder: TextEmbedder, config: ProcessorConfig,
    ) -> None:
        self._videos = videos
        self._jobs = jobs
        self._reporter = reporter
        self._blobs = blobs
        self._embedder = embedder
        self._config = config

    async def run(self, job: Job, attempt: int) -> None:
        video = await self._videos.get(job.video_id)
        report = self._reporter.for_job(job.id, STAGE_WEIGHTS)
        await report.job_started(attempt)
        source = self._blobs.local_path(video.blob_key)

        await report.start("PROBE", "reading container and streams")
        info = await probe(source)
        await self._videos.update_fields(
            video.id, duration_s=info.duration_s, width=info.width, height=info.height,
            frame_rate=info.frame_rate, video_codec=info.video_codec, audio_codec=info.audio_codec,
            has_audio=info.has_audio, state="PROCESSING",
        )
        await report.done("PROBE", f"{info.duration_s:.1f} s, {info.width}x{info.height}, {info.video_codec}")

        await report.start("THUMBNAIL", "extracting poster frame")
        thumb_key = f"videos/{video.id}/thumbnail.jpg"
        await self._frame_to_blob(source, min(1.0, info.duration_s / 2), thumb_key)
        await self._videos.update_fields(video.id, thumbnail_key=thumb_key)
        await report.done("THUMBNAIL", thumb_key)

        await report.start("SCENES", "detecting shot boundaries")
        scenes = await detect_scenes_async(
            source, info.duration_s, threshold=self._config.scene_threshold,
            min_scene_s=self._config.min_scene_s,
        )
        clips = await self._scene_clips(video, source, scenes)
        await report.done("SCENES", f"{len(clips)} scenes")

        await report.start("TRANSCRIPT", "looking for subtitles")
        cues, transcript_source = await self._transcript(video, source, info)
        if cues:
            await report.done("TRANSCRIPT", f"{len(cues)} cues from {transcript_source.lower()}")
        else:
            await report.skip("TRANSCRIPT", "no text subtitles in the file or sent with it; "
                                            "speech recognition is not enabled")
        segments = assign_segments(video.id, cues, clips, transcript_source)

        vectors: list[tuple[uuid.UUID, object]] = []
        if segments:
            await report.start("EMBED", f"embedding {len(segments)} transcript segments")
            matrix = await self._embedder.embed_texts([s.text for s in segments])
            vectors = [(s.id, np.asarray(matrix[i], dtype=np.float32)) for i, s in enumerate(segments)]
            await report.done("EMBED", f"{len(vectors)} vectors from {self._embedder.model_id}")
        else:
            await report.skip("EMBED", "no transcript to embed")

        await report.start("INDEX", "writing clips, segments and vectors")
        await report.check_cancelled()
        result = ProcessedVideo(clips, segments, vectors, transcript_source if cues else "NONE")
        await self._videos.save_processed(video.id, result, self._embedder.model_id)
        await report.finish("INDEX", f"indexed {len(clips)} clips, {len(segments)} segments")

    async def _frame_to_blob(self, source: Path, at_s: float, key: str) -> None:
        with tempfile.TemporaryDirectory(prefix="clipmind-frame-") as tmp:
            out = Path(tmp) / "frame.jpg"
            await extract_frame(source, at_s, out)
            await self._blobs.put_file(key, out, move=True)

    async def _scene_clips(self, video: Video, source: Path, scenes: list[Scene]) -> list[Clip]:
        clips = []
        for scene in scenes:
            key = f"videos/{video.id}/scenes/{scene.index:04d}.jpg"
            await self._frame_to_blob(source, (scene.start_s + scene.end_s) / 2, key)
            clips.append(
                Clip(derived_id(video.id, "clip", scene.index), video.id, scene.index, scene.start_s,
                     scene.end_s, key)
            )
        return clips

    async def _transcript(self, video: Video, source: Path, info: MediaInfo) -> tuple[list[Cue], str]:
        if video.sidecar_key:
            data = await self._blobs.get_bytes(video.sidecar_key)
            cues = parse_subtitles(data, video.sidecar_format or None, filename=video.sidecar_key)
            return clip_cues(cues, info.duration_s), "SIDECAR"
        track = pick_text_track(info.subtitle_streams)
        if track is not None:
            cues = await extract_text_track(source, track)
            return clip_cues(cues, info.duration_s), "SUBTITLE_TRACK"
        return [], "NONE"


__all__ = ["ClipMindError", "JobCancelled", "NotFound", "ProcessorConfig", "VideoProcessor"]
