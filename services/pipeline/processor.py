"""The processing of one video, stage by stage: probe → thumbnail → scenes → transcript → embed → index.

Each stage reports STARTED/COMPLETED (or SKIPPED, saying why) events through the job reporter. The video's
source comes from ingest (``VideoCatalog``: GetVideoSource), and what the run finds goes back there (probe
facts, thumbnail: UpdateVideoProcessing, fenced by the run). Every write is keyed by the video (blob keys,
derived row ids) and the final index step replaces the video's clips, segments and vectors in one call to
the search service (one transaction there), fenced by the run, so re-running a job leaves the same rows and
never duplicates. The video is marked READY (in ingest, then in search's copy of its facts) before the job
is recorded SUCCEEDED, so a client that sees the job succeed finds the video ready and searchable.

The index is written as the job owner's (``ReplaceVideoIndexRequest.owner``): the owner travels with the run,
and ingest's record of the video (GetVideoSource, read first) must agree with it (``index_owner``).

Models come through the ``Inference`` interface; a model that is off (no weights) switches its modality off
for this video, and the events name the setting that would turn it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.blobstore import BlobStore
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.ids import derived_id, keyframe_id
from services.inference.ports import Inference, ModelStatus
from services.media.layout import keyframe_key, thumbnail_key
from services.media.probe import MediaInfo, probe
from services.media.scenes import DEFAULT_KEYFRAME_INTERVAL_S, MediaPass, SceneAnalysis
from services.media.subtitles import Cue, clip_cues, extract_text_track, parse_subtitles, pick_text_track
from services.pipeline.ports import SearchIndex, VideoCatalog
from services.pipeline.records import UNOWNED, Clip, Keyframe, ProcessedVideo, Run, Segment, VideoSource
from services.pipeline.reporter import JobCancelled, JobReporter, StageReport, ride_out, superseded
from services.pipeline.speech import recognise

log = logging.getLogger(__name__)

# Share of the whole job's progress taken by each stage, in order.
STAGE_WEIGHTS = {
    "PROBE": 0.05, "THUMBNAIL": 0.05, "SCENES": 0.35, "TRANSCRIPT": 0.15, "EMBED": 0.30, "INDEX": 0.10,
}


@dataclass(frozen=True)
class ProcessorConfig:
    scene_threshold: float = 27.0
    min_scene_s: float = 0.6
    clip_batch_size: int = 8
    search_wait_s: float = 600.0  # how long INDEX waits for a search service that is away
    ingest_wait_s: float = 600.0  # how long a run waits for an ingest service that is away
    keyframe_interval_s: float = DEFAULT_KEYFRAME_INTERVAL_S  # one keyframe per this much of a scene, at least one


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


def index_owner(run: Run, video: VideoSource) -> uuid.UUID:
    """Whose index the run writes: the job's owner, which ingest's record of the video must confirm.

    Ingest is the owner of record for videos and the job took its owner from ingest's submission, so the two
    differ only through a bug or a tampered record; indexing the video for the wrong user would put it in that
    user's searches, so a disagreement fails the run at once (FAILED_PRECONDITION ``OWNER_MISMATCH``: re-running
    cannot fix it) before anything is written. Not disagreements: an ingest that does not report the owner (the
    job's stands), and a job from before jobs had owners (``UNOWNED``: ingest's is the only real one)."""
    if video.owner_id is None:
        return run.owner_id
    if run.owner_id == UNOWNED:
        return video.owner_id
    if video.owner_id != run.owner_id:
        raise FailedPrecondition(
            f"job {run.job_id} belongs to users/{run.owner_id}, but ingest records its video as owned by "
            f"users/{video.owner_id}; not indexing it for either", reason="OWNER_MISMATCH",
            metadata={"job": f"jobs/{run.job_id}", "video": f"videos/{run.video_id}"})
    return run.owner_id


def _off_note(status: ModelStatus) -> str:
    hint = f"; set {status.setting} to enable it" if status.setting else ""
    return f"{status.name} is {status.state}: {status.detail or 'no weights'}{hint}"


class VideoProcessor:
    def __init__(
        self, videos: VideoCatalog, index: SearchIndex, reporter: JobReporter, blobs: BlobStore,
        inference: Inference, config: ProcessorConfig,
    ) -> None:
        self._videos = videos
        self._index = index
        self._reporter = reporter
        self._blobs = blobs
        self._inference = inference
        self._config = config

    async def run(self, run: Run, stopping: asyncio.Event | None = None) -> None:
        """Run every stage for ``run``. Its writes are fenced by the run (a cancelled or taken-over run stops
        with ``JobCancelled`` and writes nothing more); when ``stopping`` is set the run stops at the next
        stage boundary with ``StopRequested``."""
        video = await ride_out(lambda: self._videos.source(run.video_id), within_s=self._config.ingest_wait_s)
        owner_id = index_owner(run, video)
        report = self._reporter.for_run(run, STAGE_WEIGHTS, stopping)
        source = self._blobs.local_path(video.blob_key)
        models = await self._inference.status()

        await report.start("PROBE", "reading container and streams")
        info = await probe(source)
        # One decode gives the thumbnail (early in it), the scenes and their keyframes. It starts from the
        # probe's facts (no ffprobe of its own) while those are stored and the stages reported.
        with tempfile.TemporaryDirectory(prefix="clipmind-frames-") as frames:
            async with MediaPass(source, info.duration_s, frames, thumbnail_at_s=min(1.0, info.duration_s / 2),
                                 threshold=self._config.scene_threshold, min_scene_s=self._config.min_scene_s,
                                 keyframe_interval_s=self._config.keyframe_interval_s,
                                 stream=info.video_stream) as media:
                await self._update_video(
                    run, duration_s=info.duration_s, width=info.width, height=info.height,
                    frame_rate=info.frame_rate, video_codec=info.video_codec, audio_codec=info.audio_codec,
                    has_audio=info.has_audio, state="PROCESSING",
                )
                await report.done("PROBE",
                                  f"{info.duration_s:.1f} s, {info.width}x{info.height}, {info.video_codec}")

                await report.start("THUMBNAIL", "extracting poster frame")
                thumb_key = thumbnail_key(video.video_id)
                await self._blobs.put_file(thumb_key, await media.thumbnail(), move=True)
                await self._update_video(run, thumbnail_key=thumb_key)
                await report.done("THUMBNAIL", thumb_key)

                await report.start("SCENES", "detecting shot boundaries")
                clips = await self._scene_clips(video, await media.result())
        await report.done("SCENES", f"{len(clips)} scenes, {sum(len(c.keyframes) for c in clips)} keyframes")

        # The keyframes are embedded while the transcript is found (speech recognition runs in its own
        # model instance): CLIP's work overlaps Whisper's and the audio decode instead of following them.
        clip_status = models["clip_image"]
        visual = asyncio.create_task(self._visual_vectors(clips)) if clip_status.usable else None
        try:
            await report.start("TRANSCRIPT", "looking for subtitles")
            cues, transcript_source, language, note = await self._transcript(
                video, source, info, models["whisper"], report)
            if cues:
                await report.done("TRANSCRIPT", f"{len(cues)} segments from {transcript_source.lower()}{note}")
            else:
                await report.skip("TRANSCRIPT", note)
            result = await self._embed(report, models, video.video_id, clips, cues, transcript_source, visual)
        finally:
            if visual is not None and not visual.done():
                visual.cancel()
                with contextlib.suppress(BaseException):
                    await visual
        await self._index_result(run, report, video.video_id, owner_id, result, language if cues else "")

    async def _embed(
        self, report: StageReport, models: dict[str, ModelStatus], video_id: uuid.UUID, clips: list[Clip],
        cues: list[Cue], transcript_source: str, visual: asyncio.Task[list[tuple[uuid.UUID, np.ndarray]]] | None,
    ) -> ProcessedVideo:
        """EMBED: Sentence-BERT vectors of the transcript's segments, and the keyframes' CLIP vectors (``visual``,
        started earlier) when CLIP is usable."""
        segments = assign_segments(video_id, cues, clips, transcript_source)

        frames = sum(len(c.keyframes) for c in clips)
        await report.start("EMBED", f"embedding {len(segments)} transcript segments and {frames} keyframes")
        result = ProcessedVideo(clips, segments, transcript_source=transcript_source if cues else "NONE")
        notes = []
        if segments:
            matrix = await self._inference.embed_sentences([s.text for s in segments])
            result.vectors = [(s.id, np.asarray(matrix[i], dtype=np.float32)) for i, s in enumerate(segments)]
            result.transcript_model = models["sbert"].model_id
            notes.append(f"{len(result.vectors)} transcript vectors ({result.transcript_model})")
        clip_status = models["clip_image"]
        if visual is not None:
            result.visual_vectors = await visual
            result.visual_model = clip_status.model_id
            notes.append(f"{len(result.visual_vectors)} visual vectors ({result.visual_model})")
        else:
            notes.append(f"no visual vectors: {_off_note(clip_status)}")
        if result.vectors or result.visual_vectors:
            await report.done("EMBED", "; ".join(notes))
        else:
            await report.skip("EMBED", "; ".join(notes))
        return result

    async def _index_result(
        self, run: Run, report: StageReport, video_id: uuid.UUID, owner_id: uuid.UUID, result: ProcessedVideo,
        language: str,
    ) -> None:
        clips, segments = result.clips, result.segments
        await report.start("INDEX", "writing clips, segments and vectors")
        try:  # while the search service is away the run waits (its lease is kept), up to search_wait_s
            await ride_out(lambda: self._index.replace(video_id, run.fence, result, owner_id=owner_id),
                           within_s=self._config.search_wait_s)
        except FailedPrecondition as exc:
            if superseded(exc):
                raise JobCancelled(str(run.job_id)) from exc
            raise
        await self._update_video(
            run, state="READY", scene_count=len(clips), transcript_source=result.transcript_source,
            transcript_language=language,
            transcript_model=result.transcript_model if result.vectors else "",
            visual_model=result.visual_model if result.visual_vectors else "",
        )
        await report.finish("INDEX", f"indexed {len(clips)} clips, {len(segments)} segments")

    async def _update_video(self, run: Run, **values: object) -> None:
        try:
            await ride_out(lambda: self._videos.update(run.video_id, run.fence, **values),  # type: ignore[arg-type]
                           within_s=self._config.ingest_wait_s)
        except FailedPrecondition as exc:
            if superseded(exc):
                raise JobCancelled(str(run.job_id)) from exc
            raise

    async def _scene_clips(self, video: VideoSource, analysis: SceneAnalysis) -> list[Clip]:
        """The scenes as clips, each with its keyframes stored under the scene's keys; the clip's own thumbnail
        is the keyframe at its middle."""
        clips = []
        for scene, frames in zip(analysis.scenes, analysis.keyframes, strict=True):
            keyframes = []
            for n, frame in enumerate(frames):
                key = keyframe_key(video.video_id, scene.index, n)
                await self._blobs.put_file(key, frame.path, move=True)
                keyframes.append(Keyframe(keyframe_id(video.video_id, scene.index, n), n, frame.time_s,
                                          frame.start_s, frame.end_s, key))
            middle = frames.index(analysis.middle(scene.index))
            clips.append(
                Clip(derived_id(video.video_id, "clip", scene.index), video.video_id, scene.index, scene.start_s,
                     scene.end_s, keyframes[middle].blob_key, keyframes)
            )
        return clips

    async def _visual_vectors(self, clips: list[Clip]) -> list[tuple[uuid.UUID, np.ndarray]]:
        """CLIP vectors of every keyframe of the clips, in batches; a keyframe the model rejects is left out."""
        vectors: list[tuple[uuid.UUID, np.ndarray]] = []
        frames = [k for c in clips for k in c.keyframes]
        size = max(1, self._config.clip_batch_size)
        for start in range(0, len(frames), size):
            batch = frames[start:start + size]
            images = [await self._blobs.get_bytes(k.blob_key) for k in batch]
            for frame, result in zip(batch, await self._inference.embed_images(images), strict=True):
                if isinstance(result, Exception):
                    log.warning("keyframe %s (%s) rejected by CLIP: %s", frame.id, frame.blob_key, result)
                    continue
                vectors.append((frame.id, np.asarray(result, dtype=np.float32)))
        return vectors

    async def _transcript(
        self, video: VideoSource, source: Path, info: MediaInfo, whisper: ModelStatus, report: StageReport
    ) -> tuple[list[Cue], str, str, str]:
        """(cues, source, language, note): sidecar first, then a text subtitle track, then speech recognition."""
        if video.sidecar_key:
            data = await self._blobs.get_bytes(video.sidecar_key)
            cues = await asyncio.to_thread(
                parse_subtitles, data, video.sidecar_format or None, filename=video.sidecar_key
            )
            return clip_cues(cues, info.duration_s), "SIDECAR", video.sidecar_language, ""
        track = pick_text_track(info.subtitle_streams)
        track_note = ""
        if track is not None:
            try:
                cues = await extract_text_track(source, track)
            except InvalidArgument as exc:  # an unreadable or oversized track: not worth failing the video
                log.warning("video %s: subtitle track %d unusable: %s", video.video_id, track.index, exc.message)
                track_note = f"; subtitle track {track.index} unusable ({exc.reason})"
            else:
                return clip_cues(cues, info.duration_s), "SUBTITLE_TRACK", track.language, ""
        if not info.has_audio:
            return [], "NONE", "", f"no subtitles and no audio track{track_note}"
        if not whisper.usable:
            return [], "NONE", "", f"no subtitles, and speech recognition is off: {_off_note(whisper)}{track_note}"
        await report.progress("TRANSCRIPT", 0.0, f"no subtitles: recognising speech with {whisper.model_id}")

        async def heard_so_far(done_s: float, rtf: float) -> None:
            fraction = min(1.0, done_s / info.duration_s) if info.duration_s > 0 else 0.0
            await report.progress("TRANSCRIPT", fraction, f"speech recognition: {done_s:.0f} of "
                                                          f"{info.duration_s:.0f} s, real-time factor {rtf:.2f}")

        heard = await recognise(self._inference, source, heard_so_far)
        if heard.audio_s <= 0:
            return [], "NONE", "", "no subtitles and the audio track is empty"
        note = (f" ({whisper.model_id}, real-time factor {heard.real_time_factor:.2f}"
                + (f", language {heard.language})" if heard.language else ")"))
        if not heard.cues:
            return [], "NONE", "", f"no speech heard in {heard.audio_s:.0f} s of audio{note}"
        return clip_cues(heard.cues, info.duration_s), "SPEECH_RECOGNITION", heard.language, note
