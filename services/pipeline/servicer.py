"""PipelineService gRPC servicer: jobs, their live progress, dead letters.

Every method reads the authenticated caller (``request_context.principal()``) and hands it to job control or
the watcher, which filter by owner in their queries; page tokens are bound to the caller, the method and the
filter, so a token cannot carry one user's (or one filter's) position into another list."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime
from typing import Protocol, TypeVar

from clipmind.pipeline.v1 import pipeline_service_pb2 as pb
from clipmind.pipeline.v1 import pipeline_service_pb2_grpc
from google.protobuf import empty_pb2

from services.common import priority, request_context
from services.common.blobstore import BlobStore
from services.common.convert import enum_value, timestamp
from services.common.errors import PermissionDenied, invalid_field
from services.common.grpc_server import Context
from services.common.names import (
    clip_name,
    compilation_name,
    dead_letter_name,
    job_name,
    parse_clip_name,
    parse_compilation_name,
    parse_job_name,
    parse_video_name,
    user_name,
    video_name,
)
from services.common.paging import bound_to, decode_token, encode_token, page_size
from services.pipeline.compilations import CompilationControl
from services.pipeline.jobs import JobControl
from services.pipeline.records import (
    ClipRequest,
    Compilation,
    CompilationOptions,
    CompilationPiece,
    DeadLetter,
    Job,
    JobEvent,
)
from services.pipeline.watch import Heartbeat, JobWatcher

_FILTER_TERM = re.compile(r'^\s*(video|state)\s*=\s*"?([\w/-]+)"?\s*$')


# A compilation's state is its render job's.
_COMPILATION_STATES = {"QUEUED": pb.Compilation.STATE_PENDING, "RUNNING": pb.Compilation.STATE_RUNNING,
                       "SUCCEEDED": pb.Compilation.STATE_SUCCEEDED, "FAILED": pb.Compilation.STATE_FAILED,
                       "CANCELLED": pb.Compilation.STATE_FAILED}


def _requested_piece(i: int, r: pb.ClipRange) -> CompilationPiece | ClipRequest:
    """One asked-for span: a clip (less its trims) or a video's seconds."""
    if r.clip:
        return ClipRequest(parse_clip_name(r.clip, f"compilation.clips[{i}].clip"), r.trim_start_seconds,
                           r.trim_end_seconds)
    if not r.video:
        raise invalid_field(f"compilation.clips[{i}].video", "give a clip, or a video and its seconds",
                            reason="REQUIRED_FIELD")
    return CompilationPiece(parse_video_name(r.video, f"compilation.clips[{i}].video"), r.start_seconds, r.end_seconds)


def compilation_to_pb(c: Compilation, blobs: BlobStore) -> pb.Compilation:
    done = c.state == "SUCCEEDED"
    o = c.options
    return pb.Compilation(
        name=compilation_name(c.id), job=job_name(c.job_id), user=user_name(c.owner_id),
        clips=[pb.ClipRange(video=video_name(p.video_id), start_seconds=p.start_s, end_seconds=p.end_s,
                            clip=clip_name(p.clip_id) if p.clip_id else "") for p in c.pieces],
        options=pb.CompilationOptions(crossfade_seconds=o.crossfade_s, title_text=o.title_text,
                                      title_seconds=o.title_s, fade_in_seconds=o.fade_in_s,
                                      fade_out_seconds=o.fade_out_s, width=o.width, height=o.height),
        state=_COMPILATION_STATES.get(c.state, pb.Compilation.STATE_UNSPECIFIED),
        output_uri=blobs.url(c.output_key) if done and c.output_key else "",
        duration_seconds=c.duration_s if done else 0.0, size_bytes=c.size_bytes if done else 0,
        render_method=c.render_method if done else "",
        failure_reason=(c.failure_reason or "rendering cancelled") if c.state in ("FAILED", "CANCELLED") else "",
        create_time=timestamp(c.create_time), update_time=timestamp(c.update_time),
    )


def job_to_pb(job: Job) -> pb.Job:
    return pb.Job(
        name=job_name(job.id),
        video=video_name(job.video_id) if job.video_id is not None else "",
        compilation=compilation_name(job.compilation_id) if job.compilation_id is not None else "",
        state=enum_value(pb.Job.State, "STATE", job.state),
        stage=enum_value(pb.Stage, "STAGE", job.stage),
        progress=job.progress,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        failure_reason=job.failure_reason,
        create_time=timestamp(job.create_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        update_time=timestamp(job.update_time),
        priority=priority.to_pb(job.priority),
    )


def event_to_pb(event: JobEvent | Heartbeat) -> pb.JobEvent:
    if isinstance(event, Heartbeat):
        return pb.JobEvent(job=job_name(event.job_id), sequence=event.sequence, heartbeat=True)
    return pb.JobEvent(
        job=job_name(event.job_id),
        sequence=event.sequence,
        stage=enum_value(pb.Stage, "STAGE", event.stage),
        stage_state=enum_value(pb.StageState, "STAGE_STATE", event.stage_state),
        progress=event.progress,
        message=event.message,
        job_state=enum_value(pb.Job.State, "STATE", event.job_state),
        create_time=timestamp(event.create_time),
    )


def dead_letter_to_pb(letter: DeadLetter) -> pb.DeadLetter:
    return pb.DeadLetter(
        name=dead_letter_name(letter.id), job=job_name(letter.job_id),
        video=video_name(letter.video_id) if letter.video_id is not None else "",
        failure_reason=letter.failure_reason, attempts=letter.attempts,
        create_time=timestamp(letter.create_time), failure_code=letter.failure_code,
        attempt_history=[pb.AttemptFailure(attempt=a.attempt, failure_code=a.failure_code, message=a.message,
                                           worker=a.worker, end_time=timestamp(a.create_time))
                         for a in letter.history],
    )


def parse_job_filter(expr: str) -> tuple[uuid.UUID | None, str | None]:
    """Supported: ``video = "videos/<id>"``, ``state = RUNNING``, joined by AND."""
    video_id, state = None, None
    for term in filter(None, (t.strip() for t in re.split(r"\s+AND\s+", expr.strip()))):
        match = _FILTER_TERM.match(term)
        if not match:
            raise invalid_field("filter", f"unsupported term {term!r}; use video = \"videos/<id>\" "
                                          "and/or state = QUEUED|RUNNING|SUCCEEDED|FAILED|CANCELLED")
        key, value = match.groups()
        if key == "video":
            video_id = parse_video_name(value, field="filter")
        else:
            state = value.upper().removeprefix("STATE_")
            if state not in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"):
                raise invalid_field("filter", f"unknown job state {value!r}")
    return video_id, state


class _Listed(Protocol):
    id: uuid.UUID
    create_time: datetime | None


L = TypeVar("L", bound=_Listed)


def _paged(found: list[L], size: int, binding: str) -> tuple[list[L], str]:
    """A page of ``size`` from the ``size + 1`` newest-first rows a list asked for: the page, and the next page's
    token when there is more (keyset: the last row's time and id)."""
    if len(found) <= size:
        return found, ""
    page = found[:size]
    last = page[-1]
    assert last.create_time is not None
    return page, encode_token(last.create_time, last.id, binding)


class PipelineServicer(pipeline_service_pb2_grpc.PipelineServiceServicer):
    def __init__(self, control: JobControl, watcher: JobWatcher, compilations: CompilationControl,
                 blobs: BlobStore) -> None:
        self._control = control
        self._watcher = watcher
        self._compilations = compilations
        self._blobs = blobs  # signs the rendered files' links

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        return job_to_pb(await self._control.get(request_context.principal(), parse_job_name(request.name)))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        caller = request_context.principal()
        size = page_size(request.page_size)
        video_id, state = parse_job_filter(request.filter)
        binding = bound_to(caller.user_id, "ListJobs", request.filter)
        jobs, token = _paged(await self._control.list_jobs(
            caller, limit=size + 1, after=decode_token(request.page_token, binding), video_id=video_id, state=state),
            size, binding)
        return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs], next_page_token=token)

    async def WatchJob(self, request: pb.WatchJobRequest, context: Context) -> AsyncIterator[pb.JobEvent]:
        caller = request_context.principal()
        if request.after_sequence < 0:
            raise invalid_field("after_sequence", "must not be negative")
        job_id = parse_job_name(request.name)
        async with aclosing(self._watcher.watch(caller, job_id, request.after_sequence)) as events:
            async for event in events:
                yield event_to_pb(event)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        return job_to_pb(await self._control.cancel(request_context.principal(), parse_job_name(request.name)))

    async def RetryJob(self, request: pb.RetryJobRequest, context: Context) -> pb.Job:
        caller = request_context.principal()
        job_id = parse_job_name(request.name)
        wanted = priority.requested(caller, request.priority, default="") or None
        return job_to_pb(await self._control.retry(caller, job_id, wanted))

    async def GetQueueStats(self, request: pb.GetQueueStatsRequest, context: Context) -> pb.QueueStats:
        if not request_context.principal().is_admin:
            raise PermissionDenied("queue figures are for administrators", reason="ADMIN_ONLY")
        stats = await self._control.queue_stats()
        return pb.QueueStats(
            queues=[pb.QueueStats.Queue(name=q.name, priorities=[priority.to_pb(p) for p in q.priorities],
                                        depth=q.depth) for q in stats.queues],
            jobs=[pb.QueueStats.PriorityJobs(priority=priority.to_pb(p), queued_count=queued,
                                             running_count=running) for p, (queued, running) in stats.jobs])

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        caller = request_context.principal()
        size = page_size(request.page_size)
        binding = bound_to(caller.user_id, "ListDeadLetters")
        letters, token = _paged(await self._control.dead_letters(
            caller, limit=size + 1, after=decode_token(request.page_token, binding)), size, binding)
        return pb.ListDeadLettersResponse(
            dead_letters=[dead_letter_to_pb(d) for d in letters], next_page_token=token
        )

    async def CreateCompilation(self, request: pb.CreateCompilationRequest, context: Context) -> pb.Compilation:
        caller = request_context.principal()
        if not request.HasField("compilation") and not request.search_id:
            raise invalid_field("compilation", "required (or a search_id)", reason="REQUIRED_FIELD")
        c = request.compilation
        pieces = [_requested_piece(i, r) for i, r in enumerate(c.clips)]
        search_id = None
        if request.search_id:
            try:
                search_id = uuid.UUID(request.search_id)
            except ValueError:
                raise invalid_field("search_id", "not a search id (a UUID)") from None
        if request.top_result_count < 0:
            raise invalid_field("top_result_count", "must not be negative")
        o = c.options
        options = CompilationOptions(o.crossfade_seconds, o.title_text, o.title_seconds, o.fade_in_seconds,
                                     o.fade_out_seconds, o.width, o.height)
        wanted = priority.requested(caller, c.priority, "compilation.priority")
        made = await self._compilations.create(caller, pieces, options, priority=wanted, search_id=search_id,
                                               top=request.top_result_count)
        return compilation_to_pb(made, self._blobs)

    async def GetCompilation(self, request: pb.GetCompilationRequest, context: Context) -> pb.Compilation:
        found = await self._compilations.get(request_context.principal(), parse_compilation_name(request.name))
        return compilation_to_pb(found, self._blobs)

    async def ListCompilations(self, request: pb.ListCompilationsRequest,
                               context: Context) -> pb.ListCompilationsResponse:
        caller = request_context.principal()
        size = page_size(request.page_size)
        binding = bound_to(caller.user_id, "ListCompilations")
        found, token = _paged(await self._compilations.list_page(
            caller, limit=size + 1, after=decode_token(request.page_token, binding)), size, binding)
        return pb.ListCompilationsResponse(compilations=[compilation_to_pb(c, self._blobs) for c in found],
                                           next_page_token=token)

    async def DeleteCompilation(self, request: pb.DeleteCompilationRequest, context: Context) -> empty_pb2.Empty:
        await self._compilations.delete(request_context.principal(), parse_compilation_name(request.name))
        return empty_pb2.Empty()
