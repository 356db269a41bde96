"""Job progress: every stage transition is an ordered event row in Postgres, then a Redis notice.

``WatchJob`` streams from the rows, so a notice lost on the way only delays an event, never drops it.
"""

from __future__ import annotations

import uuid

from services.common.errors import FailedPrecondition
from services.common.job_store import JobStore
from services.common.queue import ProgressBus
from services.common.records import JobEvent


class JobCancelled(Exception):
    """The job was cancelled while it ran; the worker stops at the next stage boundary."""


class JobReporter:
    def __init__(self, jobs: JobStore, bus: ProgressBus) -> None:
        self._jobs = jobs
        self._bus = bus

    def for_job(self, job_id: uuid.UUID, weights: dict[str, float]) -> StageReport:
        return StageReport(self, job_id, weights)

    async def emit(self, job_id: uuid.UUID, **kwargs: object) -> JobEvent:
        try:
            event = await self._jobs.record_event(job_id, **kwargs)  # type: ignore[arg-type]
        except FailedPrecondition as exc:
            if exc.reason == "JOB_ALREADY_FINISHED":  # cancelled while this stage ran
                raise JobCancelled(str(job_id)) from exc
            raise
        await self._bus.publish_best_effort(job_id, event.sequence)
        return event


class StageReport:
    """Reports the stages of one run of one job, tracking overall progress from stage weights."""

    def __init__(self, reporter: JobReporter, job_id: uuid.UUID, weights: dict[str, float]) -> None:
        self._reporter = reporter
        self._job_id = job_id
        self._weights = weights
        self._done = 0.0
        self._stage = "STAGE_UNSPECIFIED"

    async def check_cancelled(self) -> None:
        job = await self._reporter._jobs.get(self._job_id)
        if job.state == "CANCELLED":
            raise JobCancelled(str(self._job_id))

    async def job_started(self, attempt: int) -> None:
        await self.check_cancelled()
        first = next(iter(self._weights))
        await self._reporter.emit(
            self._job_id, stage=first, stage_state="STARTED", progress=0.0,
            message=f"attempt {attempt} started", job_state="RUNNING", attempt=attempt,
        )

    async def start(self, stage: str, message: str) -> None:
        await self.check_cancelled()
        self._stage = stage
        await self._reporter.emit(
            self._job_id, stage=stage, stage_state="STARTED", progress=self._done, message=message,
            job_state="RUNNING",
        )

    async def _end(self, stage: str, stage_state: str, message: str, job_state: str = "RUNNING") -> None:
        self._done = min(1.0, self._done + self._weights.get(stage, 0.0))
        await self._reporter.emit(
            self._job_id, stage=stage, stage_state=stage_state, progress=self._done, message=message,
            job_state=job_state, failure_reason="" if job_state == "SUCCEEDED" else None,
        )

    async def done(self, stage: str, message: str) -> None:
        await self._end(stage, "COMPLETED", message)

    async def skip(self, stage: str, message: str) -> None:
        await self._end(stage, "SKIPPED", message)

    async def finish(self, stage: str, message: str) -> None:
        """The last stage completed: the job succeeded."""
        self._done = 1.0 - self._weights.get(stage, 0.0)
        await self._end(stage, "COMPLETED", message, job_state="SUCCEEDED")

    async def failed(self, message: str, *, final: bool) -> None:
        """Report a failed attempt at the stage and progress the job row holds (this report object may be
        a fresh one, made by the worker after the processor gave up)."""
        await self._reporter.emit(
            self._job_id, stage=None, stage_state="FAILED", progress=None,
            message=message if final else f"{message} (will retry)",
            job_state="FAILED" if final else "RUNNING", failure_reason=message,
        )
