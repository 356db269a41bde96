"""Job runs: how one attempt at a job is claimed, kept alive, stopped and ended.

The database, not the queue, decides who runs a job (the pattern of Temporal's activity heartbeats and
Celery's late acks with visibility timeouts):

- **Claim.** A queue entry (``queue_key``) starts a run only if the job is QUEUED under that very key;
  the run gets a fresh ``run_id`` (its fencing token) and a lease, and the attempt counter goes up.
- **Lease.** While the stages work, a guard task renews the lease every ``heartbeat_s`` and checks every
  ``cancel_poll_s`` that the run still owns the job. A cancel (or a take-over) cancels the stage task at
  once: ffmpeg children are killed, scene detection and speech recognition stop inside their loops.
- **Fencing.** Every write of a run to the pipeline's rows (events, video fields, the READY mark) checks that
  the run still owns the job, so a cancelled or superseded run can never write events or mark its video; its
  index write carries the run's ``fence``, which the search service compares with the one it holds.
- **End.** Success ends with the INDEX stage (index written through search, video marked READY in ingest:
  idempotent calls, retried while those services are away, fenced by the run). A failure
  is recorded with a stable reason; if attempts remain the job is queued again under a new key, deferred by
  ``retry_base_s · 2^(attempt-1)``, else it is FAILED with a dead letter. A worker that is asked to stop
  (SIGTERM) hands its job back at the next stage boundary (or when its grace runs out) without using an
  attempt.
- **Take-over.** A worker that died leaves a lease that stops being renewed; the sweep
  (``JobControl.take_over_expired``) counts that attempt as failed (``WORKER_LOST``) and queues the next
  one, or dead-letters the job after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from services.common.blobstore import BlobStore
from services.common.errors import ClipMindError, NotFound
from services.common.metrics import ATTEMPT_DURATION, ATTEMPTS
from services.common.queue import JobQueue, enqueue_or_leave_to_sweep, queue_key
from services.media.layout import video_prefix
from services.pipeline.ports import Jobs
from services.pipeline.processor import VideoProcessor
from services.pipeline.records import Run
from services.pipeline.renderer import CompilationRenderer
from services.pipeline.reporter import JobCancelled, JobReporter, StopRequested, ride_out

log = logging.getLogger(__name__)

# Errors that re-running cannot fix: fail at once instead of retrying.
PERMANENT_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "OUT_OF_RANGE"})
MAX_MESSAGE_CHARS = 300
# What ``JobRunner.run`` says of an attempt → the ``outcome`` label of clipmind_worker_attempts_total (any other
# answer is a run that stopped because it lost its job: cancelled or taken over).
ATTEMPT_OUTCOMES = {
    "succeeded": "succeeded", "failed": "failed", "will retry": "retry", "handed back": "handed_back",
    "video deleted while processing": "deleted",
}


@dataclass(frozen=True)
class RunPolicy:
    """Timing of runs; every figure is a worker setting."""

    lease_s: float = 60.0
    heartbeat_s: float = 10.0
    cancel_poll_s: float = 1.0
    retry_base_s: float = 60.0
    job_timeout_s: float = 3600.0


def backoff_s(base_s: float, failed_attempt: int) -> float:
    """Delay before the attempt after ``failed_attempt`` (1-based): base, 2·base, 4·base, …"""
    return base_s * 2 ** max(0, failed_attempt - 1)


def failure_of(exc: BaseException, stage: str) -> tuple[str, str]:
    """(stable reason, short message) of a failed attempt, fit to show a user.

    Expected errors keep their own reason and message; anything else is INTERNAL with a request id under
    which the log holds the details (paths, hosts and library text never reach the job record)."""
    if isinstance(exc, ClipMindError) and exc.code != "INTERNAL":
        return exc.reason, exc.message[:MAX_MESSAGE_CHARS]
    request_id = uuid.uuid4().hex[:16]
    log.error("internal error during %s (request id %s)", stage, request_id, exc_info=exc)
    reason = exc.reason if isinstance(exc, ClipMindError) else "INTERNAL"
    return reason, f"internal error during {stage.removeprefix('STAGE_')} (request id {request_id})"


class _Guard:
    """Keeps a run's lease alive and cancels its work the moment the run stops owning the job."""

    def __init__(self, jobs: Jobs, run: Run, policy: RunPolicy, work: asyncio.Task[None]) -> None:
        self.lost = False
        self._jobs, self._run, self._policy, self._work = jobs, run, policy, work
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self._work.done():
            await asyncio.sleep(self._policy.cancel_poll_s)
            try:
                if time.monotonic() - last_beat >= self._policy.heartbeat_s:
                    owns = await self._jobs.heartbeat(self._run.job_id, self._run.run_id, self._policy.lease_s)
                    last_beat = time.monotonic()
                else:
                    owns = await self._jobs.owns(self._run.job_id, self._run.run_id)
            except Exception as exc:  # the database is away: the lease may lapse, fencing keeps writes safe
                log.warning("job %s: lease check failed (%s); trying again", self._run.job_id, exc)
                continue
            if not owns:
                log.info("job %s: run %s no longer owns the job (cancelled or taken over): stopping it",
                         self._run.job_id, self._run.run_id)
                self.lost = True
                self._work.cancel()
                return

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class JobRunner:
    """Runs one queue entry of a job — a video's processing (``VideoProcessor``) or a compilation's render
    (``CompilationRenderer``) — as one fenced, leased attempt."""

    def __init__(
        self, jobs: Jobs, reporter: JobReporter, queue: JobQueue, blobs: BlobStore,
        processor: VideoProcessor, policy: RunPolicy, *, worker: str, renderer: CompilationRenderer | None = None,
    ) -> None:
        self._jobs = jobs
        self._reporter = reporter
        self._queue = queue
        self._blobs = blobs
        self._processor = processor
        self._renderer = renderer
        self._policy = policy
        self._worker = worker

    async def run(self, job_id: uuid.UUID, key: str, *, stopping: asyncio.Event | None = None) -> str:
        """Claim and run the attempt that queue entry ``key`` stands for; returns what happened."""
        run_id = uuid.uuid4()
        claimed = await ride_out(lambda: self._jobs.claim(
            job_id, queue_key=key, run_id=run_id, worker=self._worker, lease_s=self._policy.lease_s))
        if claimed is None:
            return "nothing to run: the job ended, runs elsewhere, or was re-queued under another key"
        job, event = claimed
        await self._reporter.published(event)
        subject = job.compilation_id or job.video_id
        assert subject is not None  # a job has one (jobs_one_subject)
        run = Run(job.id, subject, run_id, job.attempt, job.max_attempts, job.fence, owner_id=job.owner_id,
                  priority=job.priority, compilation=job.compilation_id is not None)
        started = time.monotonic()
        if run.compilation and self._renderer is None:
            raise RuntimeError("this worker has no compilation renderer")
        doer = self._renderer if run.compilation and self._renderer is not None else self._processor
        work = asyncio.create_task(doer.run(run, stopping), name=f"job {job.id} attempt {job.attempt}")
        guard = _Guard(self._jobs, run, self._policy, work)
        outcome = "interrupted"  # the worker's task was cancelled (shutdown, arq's job timeout)
        try:
            said = await self._attempt(run, work, guard, started)
            outcome = ATTEMPT_OUTCOMES.get(said, "stopped")
            return said
        finally:
            await guard.close()
            ATTEMPTS.labels(outcome).inc()
            ATTEMPT_DURATION.labels(outcome).observe(time.monotonic() - started)

    async def _attempt(self, run: Run, work: asyncio.Task[None], guard: _Guard, started: float) -> str:
        """Wait for the attempt's work and end the run as its outcome says; returns what happened."""
        try:
            await work
            return "succeeded"
        except JobCancelled:
            return "stopped: the job was cancelled or taken over"
        except StopRequested as stop:
            await self._hand_back(run, f"the worker is stopping; handed back before {stop} (no attempt used)")
            return "handed back"
        except NotFound as gone:
            if run.compilation:
                if gone.reason in ("COMPILATION_NOT_FOUND", "JOB_NOT_FOUND"):  # deleted: its job went with it
                    return "compilation deleted while rendering"
                await self._end_failed(run, "SOURCE_NOT_FOUND", "a video of the compilation was deleted", final=True)
                return "failed"
            if gone.reason not in ("VIDEO_NOT_FOUND", "JOB_NOT_FOUND"):
                await self._end_failed(run, *failure_of(gone, "processing"), final=True)
                return "failed"
            # The video was deleted (ingest deletes its jobs through the pipeline's DeleteVideoJobs; a job
            # submitted after that deletion arrived is removed here): drop the job and what the run wrote.
            await ride_out(lambda: self._jobs.delete_for_video(run.video_id))
            await self._blobs.delete_prefix(video_prefix(run.video_id))
            return "video deleted while processing"
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if guard.lost and current is not None and not current.cancelling():
                return "stopped: the job was cancelled or taken over"  # only the work was cancelled
            if time.monotonic() - started >= self._policy.job_timeout_s - 1:  # arq's job timeout: final
                await asyncio.shield(self._end_failed(
                    run, "JOB_TIMEOUT", f"took longer than {self._policy.job_timeout_s:.0f} s", final=True))
            else:  # the worker is shutting down and its grace ran out: hand the job back
                await asyncio.shield(self._hand_back(run, "the worker stopped mid-stage; handed back (no attempt "
                                                          "used)"))
            raise
        except Exception as exc:
            code, message = failure_of(exc, "processing")
            permanent = isinstance(exc, ClipMindError) and exc.code in PERMANENT_CODES
            final = permanent or run.attempt >= run.max_attempts
            log.warning("job %s attempt %d/%d failed (%s): %s: %s", run.job_id, run.attempt, run.max_attempts,
                        "final" if final else "will retry", code, message)
            await self._end_failed(run, code, message, final=final)
            return "failed" if final else "will retry"

    async def _end_failed(self, run: Run, code: str, message: str, *, final: bool) -> None:
        if final:
            event = await ride_out(lambda: self._jobs.end_run(
                run.job_id, run.run_id, outcome="fail", code=code, message=message))
            if event is not None:
                await self._reporter.published(event)
            return
        delay = backoff_s(self._policy.retry_base_s, run.attempt)
        new_key = queue_key(run.job_id, time.time_ns())
        event = await ride_out(lambda: self._jobs.end_run(
            run.job_id, run.run_id, outcome="retry", code=code, message=message, new_key=new_key,
            event_message=f"{code}: {message} (attempt {run.attempt} of {run.max_attempts}; next attempt in "
                          f"{delay:g} s)"))
        if event is None:  # cancelled meanwhile
            return
        await enqueue_or_leave_to_sweep(self._queue, run.job_id, new_key, defer_s=delay, priority=run.priority)
        await self._reporter.published(event)

    async def _hand_back(self, run: Run, message: str) -> None:
        new_key = queue_key(run.job_id, time.time_ns())
        try:
            event = await ride_out(lambda: self._jobs.end_run(
                run.job_id, run.run_id, outcome="handback", message=message, new_key=new_key), within_s=10)
        except Exception as exc:  # the lease runs out and the sweep takes the job over instead
            log.warning("job %s: could not hand back (%s); the sweep will take it over", run.job_id, exc)
            return
        if event is not None:
            await enqueue_or_leave_to_sweep(self._queue, run.job_id, new_key, priority=run.priority)
            await self._reporter.published(event)

