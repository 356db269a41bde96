"""Job progress: every stage transition is an ordered event row in Postgres, then a Redis notice.

``WatchJob`` streams from the rows, so a notice lost on the way only delays an event, never drops it.
A run's events are fenced: they are written only while that run owns its job, so a cancelled or
taken-over run learns it at its next event (``JobCancelled``) and writes nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.common.errors import FailedPrecondition, Unavailable
from services.common.metrics import STAGE_DURATION
from services.common.progress import ProgressBus
from services.pipeline.ports import Jobs
from services.pipeline.records import JobEvent, Run

log = logging.getLogger(__name__)

T = TypeVar("T")

# A run rides out a database that is away this long (a restart, a failover) before its attempt fails.
DB_OUTAGE_S = 60.0


class JobCancelled(Exception):
    """The run no longer owns its job (cancelled, or taken over after its lease ran out): it stops."""


class StopRequested(Exception):
    """The worker is shutting down: the run stops at a stage boundary and hands its job back."""


async def ride_out(call: Callable[[], Awaitable[T]], *, within_s: float = DB_OUTAGE_S) -> T:
    """``call()``, retried with backoff while it fails UNAVAILABLE (the database, or a service it calls), for up
    to ``within_s``."""
    deadline = time.monotonic() + within_s
    delay = 0.2
    while True:
        try:
            return await call()
        except Unavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("unavailable (%s: %s); retrying in %.1f s", exc.reason, exc.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def superseded(exc: FailedPrecondition) -> bool:
    """Does this error say the run lost its job (cancelled, ended or taken over)?"""
    return exc.reason in ("JOB_ALREADY_FINISHED", "RUN_SUPERSEDED")


class JobReporter:
    def __init__(self, jobs: Jobs, bus: ProgressBus, *, db_outage_s: float = DB_OUTAGE_S) -> None:
        self._jobs = jobs
        self._bus = bus
        self._db_outage_s = db_outage_s

    def for_run(self, run: Run, weights: dict[str, float], stopping: asyncio.Event | None = None) -> StageReport:
        return StageReport(self, run, weights, stopping)

    async def emit(self, job_id: uuid.UUID, run_id: uuid.UUID | None = None, **kwargs: object) -> JobEvent:
        try:
            event = await ride_out(
                lambda: self._jobs.record_event(job_id, run_id=run_id, **kwargs),  # type: ignore[arg-type]
                within_s=self._db_outage_s,
            )
        except FailedPrecondition as exc:
            if superseded(exc):
                raise JobCancelled(str(job_id)) from exc
            raise
        await self._bus.publish_best_effort(job_id, event.sequence)
        return event

    async def published(self, event: JobEvent) -> JobEvent:
        """Publish the notice of an event written elsewhere (a claim, the end of a run)."""
        await self._bus.publish_best_effort(event.job_id, event.sequence)
        return event


class StageReport:
    """Reports the stages of one run of one job, tracking overall progress from stage weights."""

    def __init__(
        self, reporter: JobReporter, run: Run, weights: dict[str, float], stopping: asyncio.Event | None = None
    ) -> None:
        self._reporter = reporter
        self._run = run
        self._weights = weights
        self._stopping = stopping
        self._done = 0.0
        self._stage = "STAGE_UNSPECIFIED"
        self._stage_started = time.monotonic()

    @property
    def stage(self) -> str:
        return self._stage

    async def start(self, stage: str, message: str) -> None:
        """A stage begins — unless the worker is stopping: then the run hands its job back here, at a stage
        boundary, so a stage is never cut off halfway."""
        if self._stopping is not None and self._stopping.is_set():
            raise StopRequested(stage)
        self._stage = stage
        self._stage_started = time.monotonic()
        await self._emit(stage=stage, stage_state="STARTED", progress=self._done, message=message,
                         job_state="RUNNING")

    async def _end(self, stage: str, stage_state: str, message: str, job_state: str = "RUNNING") -> None:
        # The stage's time (``clipmind_worker_stage_duration_seconds``), from its start (a stage skipped without
        # starting took none); observed before the event is written, so a run cancelled at this very event
        # still shows the work it did.
        took = time.monotonic() - self._stage_started if stage == self._stage else 0.0
        STAGE_DURATION.labels(stage, stage_state.lower()).observe(took)
        self._done = min(1.0, self._done + self._weights.get(stage, 0.0))
        await self._emit(
            stage=stage, stage_state=stage_state, progress=self._done, message=message, job_state=job_state,
            failure_reason="" if job_state == "SUCCEEDED" else None,
        )

    async def _emit(self, **kwargs: object) -> None:
        await self._reporter.emit(self._run.job_id, self._run.run_id, **kwargs)

    async def progress(self, stage: str, fraction: float, message: str) -> None:
        """The running stage is ``fraction`` (0–1) done: the job's progress moves within the stage's share."""
        within = self._weights.get(stage, 0.0) * min(1.0, max(0.0, fraction))
        await self._emit(stage=stage, stage_state="PROGRESS", progress=min(1.0, self._done + within),
                         message=message, job_state="RUNNING")

    async def done(self, stage: str, message: str) -> None:
        await self._end(stage, "COMPLETED", message)

    async def skip(self, stage: str, message: str) -> None:
        await self._end(stage, "SKIPPED", message)

    async def finish(self, stage: str, message: str) -> None:
        """The last stage completed: the job succeeded."""
        self._done = 1.0 - self._weights.get(stage, 0.0)
        await self._end(stage, "COMPLETED", message, job_state="SUCCEEDED")
