"""Compilations: the request checked (every span inside one of the caller's own videos, the options within bounds),
the compilation stored with its render job and enqueued; read, listed and deleted by their owner (administrators:
anyone's). Rendering is ``renderer.CompilationRenderer``, run by a worker like any job.

Another user's video in a request is NOT_FOUND, as a video that does not exist (whether it exists is not the
caller's to learn); another user's compilation too.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from datetime import datetime

from services.common.blobstore import BlobStore
from services.common.errors import FailedPrecondition, NotFound, invalid_field
from services.common.ids import job_id_for
from services.common.names import clip_name, video_name
from services.common.principal import Principal
from services.common.queue import DEFAULT_PRIORITY, JobQueue, enqueue_or_leave_to_sweep, queue_key
from services.media.layout import compilation_prefix
from services.pipeline.ports import ClipSources, Compilations, Jobs, VideoCatalog
from services.pipeline.records import (
    ClipRequest,
    Compilation,
    CompilationOptions,
    CompilationPiece,
    Job,
    VideoSource,
)

log = logging.getLogger(__name__)

MAX_PIECES = 100
MIN_PIECE_S = 0.1
MAX_TOTAL_S = 3 * 3600.0
MAX_CROSSFADE_S = 5.0
MAX_FADE_S = 10.0
MAX_TITLE_CHARS = 200
DURATION_SLACK_S = 0.05  # a span may end this far past the recorded length (rounding of the probe)


def check_options(options: CompilationOptions, pieces: list[CompilationPiece]) -> CompilationOptions:
    """The options, within bounds (INVALID_ARGUMENT naming the field otherwise), a title's length defaulted."""
    where = "compilation.options"
    for name, value, most in (("crossfade_seconds", options.crossfade_s, MAX_CROSSFADE_S),
                              ("fade_in_seconds", options.fade_in_s, MAX_FADE_S),
                              ("fade_out_seconds", options.fade_out_s, MAX_FADE_S),
                              ("title_seconds", options.title_s, MAX_FADE_S)):
        if not math.isfinite(value) or not 0 <= value <= most:
            raise invalid_field(f"{where}.{name}", f"must be between 0 and {most:g} seconds")
    shortest = min(p.end_s - p.start_s for p in pieces)
    if options.crossfade_s > shortest / 2:
        raise invalid_field(f"{where}.crossfade_seconds",
                            f"at most half of the shortest clip ({shortest / 2:.2f} s)")
    if len(options.title_text) > MAX_TITLE_CHARS or any(ord(c) < 32 for c in options.title_text):
        raise invalid_field(f"{where}.title_text", f"at most {MAX_TITLE_CHARS} characters, on one line")
    if (options.width == 0) != (options.height == 0):
        raise invalid_field(f"{where}.width", "give width and height together, or neither")
    if options.width:
        for name, value, most in (("width", options.width, 3840), ("height", options.height, 2160)):
            if value % 2 or not 64 <= value <= most:
                raise invalid_field(f"{where}.{name}", f"an even number of pixels from 64 to {most}")
    title_s = options.title_s or (3.0 if options.title_text else 0.0)
    return CompilationOptions(options.crossfade_s, options.title_text, title_s, options.fade_in_s,
                              options.fade_out_s, options.width, options.height)


def check_pieces(pieces: list[CompilationPiece]) -> None:
    if not pieces:
        raise invalid_field("compilation.clips", "at least one clip", reason="REQUIRED_FIELD")
    if len(pieces) > MAX_PIECES:
        raise invalid_field("compilation.clips", f"at most {MAX_PIECES} clips")
    for i, p in enumerate(pieces):
        if not (math.isfinite(p.start_s) and p.start_s >= 0):
            raise invalid_field(f"compilation.clips[{i}].start_seconds", "must be 0 or more")
        if not (math.isfinite(p.end_s) and p.end_s >= p.start_s + MIN_PIECE_S):
            raise invalid_field(f"compilation.clips[{i}].end_seconds",
                                f"must be at least {MIN_PIECE_S:g} s after start_seconds")
    if sum(p.end_s - p.start_s for p in pieces) > MAX_TOTAL_S:
        raise invalid_field("compilation.clips", f"at most {MAX_TOTAL_S / 3600:g} hours in all")


class CompilationControl:
    def __init__(self, compilations: Compilations, jobs: Jobs, catalog: VideoCatalog, queue: JobQueue,
                 blobs: BlobStore, sources: ClipSources, *, max_attempts: int = 3) -> None:
        self._compilations = compilations
        self._jobs = jobs
        self._catalog = catalog
        self._queue = queue
        self._blobs = blobs
        self._sources = sources
        self._max_attempts = max_attempts

    async def create(self, caller: Principal, requested: Sequence[CompilationPiece | ClipRequest],
                     options: CompilationOptions, *, priority: str = DEFAULT_PRIORITY,
                     search_id: uuid.UUID | None = None, top: int = 0) -> Compilation:
        """Check the request — spans of videos, or clips (trimmed), or the top ``top`` results (0: all) of search
        ``search_id`` —, store the compilation with its render job, enqueue the job."""
        if search_id is not None:
            if requested:
                raise invalid_field("search_id", "give the clips or a search, not both")
            ranked = await self._sources.search_results(search_id, user=caller.scope)
            requested = [ClipRequest(c) for c in (ranked[:top] if top > 0 else ranked)]
            if not requested:
                raise invalid_field("search_id", "the search found nothing to compile", reason="EMPTY_SEARCH")
        pieces = await self._spans(caller, requested)
        check_pieces(pieces)
        options = check_options(options, pieces)
        sources: dict[uuid.UUID, VideoSource] = {}  # one ingest call per video, however many spans it gives
        for i, piece in enumerate(pieces):
            if piece.video_id not in sources:
                sources[piece.video_id] = await self._catalog.source(piece.video_id)  # NOT_FOUND: no such video
            self._check_video(caller, i, piece, sources[piece.video_id])
        compilation_id = uuid.uuid4()
        job_id = job_id_for(compilation_id, 1)
        job = Job(job_id, None, "QUEUED", max_attempts=self._max_attempts, queue_key=queue_key(job_id),
                  owner_id=caller.user_id, priority=priority, compilation_id=compilation_id)
        made = await self._compilations.create(
            Compilation(compilation_id, caller.user_id, pieces, options, job_id), job)
        await enqueue_or_leave_to_sweep(self._queue, job_id, job.queue_key, priority=priority)
        return made

    async def _spans(self, caller: Principal,
                     requested: Sequence[CompilationPiece | ClipRequest]) -> list[CompilationPiece]:
        """Every clip asked for as its video's span less the trims (another user's clip is NOT_FOUND, like one that
        does not exist); spans of videos as they are."""
        clip_ids = [r.clip_id for r in requested if isinstance(r, ClipRequest)]
        spans = await self._sources.spans(clip_ids, owner=caller.scope) if clip_ids else {}
        pieces = []
        for i, r in enumerate(requested):
            if isinstance(r, CompilationPiece):
                pieces.append(r)
                continue
            span = spans.get(r.clip_id)
            if span is None:
                raise NotFound(f"clip {r.clip_id} not found", reason="CLIP_NOT_FOUND",
                               metadata={"name": clip_name(r.clip_id)})
            for name, trim in (("trim_start_seconds", r.trim_start_s), ("trim_end_seconds", r.trim_end_s)):
                if not math.isfinite(trim) or trim < 0:
                    raise invalid_field(f"compilation.clips[{i}].{name}", "must be 0 or more")
            start, end = span.start_s + r.trim_start_s, span.end_s - r.trim_end_s
            if end - start < MIN_PIECE_S:
                raise invalid_field(f"compilation.clips[{i}].trim_end_seconds",
                                    f"the trims leave less than {MIN_PIECE_S:g} s of the clip "
                                    f"({span.end_s - span.start_s:.2f} s long)")
            pieces.append(CompilationPiece(span.video_id, start, end, clip_id=r.clip_id))
        return pieces

    @staticmethod
    def _check_video(caller: Principal, i: int, piece: CompilationPiece, source: VideoSource) -> None:
        """The span is inside a video the caller may use (another user's is NOT_FOUND, as one that does not exist)."""
        if not caller.is_admin and source.owner_id != caller.user_id:
            raise NotFound(f"video {piece.video_id} not found", reason="VIDEO_NOT_FOUND",
                           metadata={"name": video_name(piece.video_id)})
        if source.duration_s and piece.end_s > source.duration_s + DURATION_SLACK_S:
            raise invalid_field(f"compilation.clips[{i}].end_seconds",
                                f"past the end of the video ({source.duration_s:.2f} s)")

    async def get(self, caller: Principal, compilation_id: uuid.UUID) -> Compilation:
        return await self._compilations.get(compilation_id, scope=caller.scope)

    async def list_page(self, caller: Principal, *, limit: int,
                        after: tuple[datetime, uuid.UUID] | None) -> list[Compilation]:
        return await self._compilations.list_page(scope=caller.scope, limit=limit, after=after)

    async def delete(self, caller: Principal, compilation_id: uuid.UUID) -> None:
        """Delete the compilation, its job and its file; a render still running is cancelled first (its run stops
        within a second and writes nothing more)."""
        found = await self._compilations.get(compilation_id, scope=caller.scope)
        if found.state in ("QUEUED", "RUNNING"):
            try:
                await self._jobs.cancel(found.job_id, scope=None, message="compilation deleted")
            except FailedPrecondition:
                pass  # it ended meanwhile
        await self._compilations.delete(compilation_id, scope=caller.scope)
        await self._blobs.delete_prefix(compilation_prefix(compilation_id))
