"""PipelineService gRPC servicer: jobs, their live progress, dead letters."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from clipmind.pipeline.v1 import pipeline_service_pb2 as pb
from clipmind.pipeline.v1 import pipeline_service_pb2_grpc

from services.common.convert import enum_value, timestamp
from services.common.errors import Unimplemented, invalid_field
from services.common.paging import decode_token, encode_token, page_size, parse_name
from services.pipeline.jobs import JobControl
from services.pipeline.ports import Jobs
from services.pipeline.records import DeadLetter, Job, JobEvent
from services.pipeline.watch import Heartbeat, JobWatcher

_FILTER_TERM = re.compile(r'^\s*(video|state)\s*=\s*"?([\w/-]+)"?\s*$')


def job_to_pb(job: Job) -> pb.Job:
    return pb.Job(
        name=f"jobs/{job.id}",
        video=f"videos/{job.video_id}",
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
    )


def event_to_pb(event: JobEvent | Heartbeat) -> pb.JobEvent:
    if isinstance(event, Heartbeat):
        return pb.JobEvent(job=f"jobs/{event.job_id}", sequence=event.sequence, heartbeat=True)
    return pb.JobEvent(
        job=f"jobs/{event.job_id}",
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
        name=f"deadLetters/{letter.id}", job=f"jobs/{letter.job_id}", video=f"videos/{letter.video_id}",
        failure_reason=letter.failure_reason, attempts=letter.attempts,
        create_time=timestamp(letter.create_time),
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
            video_id = parse_name(value, "videos", field="filter")
        else:
            state = value.upper().removeprefix("STATE_")
            if state not in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"):
                raise invalid_field("filter", f"unknown job state {value!r}")
    return video_id, state


class PipelineServicer(pipeline_service_pb2_grpc.PipelineServiceServicer):
    def __init__(self, jobs: Jobs, control: JobControl, watcher: JobWatcher) -> None:
        self._jobs = jobs
        self._control = control
        self._watcher = watcher

    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.Job:
        return job_to_pb(await self._jobs.get(parse_name(request.name, "jobs")))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        size = page_size(request.page_size)
        video_id, state = parse_job_filter(request.filter)
        jobs = await self._jobs.list_page(limit=size + 1, after=decode_token(request.page_token),
                                     video_id=video_id, state=state)
        token = ""
        if len(jobs) > size:
            jobs = jobs[:size]
            assert jobs[-1].create_time is not None
            token = encode_token(jobs[-1].create_time, jobs[-1].id)
        return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs], next_page_token=token)

    async def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> AsyncIterator[pb.JobEvent]:
        if request.after_sequence < 0:
            raise invalid_field("after_sequence", "must not be negative")
        job_id = parse_name(request.name, "jobs")
        async with aclosing(self._watcher.watch(job_id, request.after_sequence)) as events:
            async for event in events:
                yield event_to_pb(event)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.Job:
        return job_to_pb(await self._control.cancel(parse_name(request.name, "jobs")))

    async def RetryJob(self, request: pb.RetryJobRequest, context: Any) -> pb.Job:
        return job_to_pb(await self._control.retry(parse_name(request.name, "jobs")))

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Any
    ) -> pb.ListDeadLettersResponse:
        size = page_size(request.page_size)
        letters = await self._jobs.dead_letters(limit=size + 1, after=decode_token(request.page_token))
        token = ""
        if len(letters) > size:
            letters = letters[:size]
            assert letters[-1].create_time is not None
            token = encode_token(letters[-1].create_time, letters[-1].id)
        return pb.ListDeadLettersResponse(
            dead_letters=[dead_letter_to_pb(d) for d in letters], next_page_token=token
        )

    async def CreateCompilation(self, request: Any, context: Any) -> pb.Compilation:
        raise Unimplemented("compilations are not implemented yet", reason="NOT_IMPLEMENTED")

    async def GetCompilation(self, request: Any, context: Any) -> pb.Compilation:
        raise Unimplemented("compilations are not implemented yet", reason="NOT_IMPLEMENTED")
