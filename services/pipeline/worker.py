"""arq worker: runs the processing stages of queued jobs.

Composition root of the worker process: ``on_startup`` builds settings, pool, stores, blob store,
inference client and the processor; ``process_video`` only looks the job up and runs it, turning
failures into retries (transient) or a failed job + dead letter (permanent, or out of attempts).
``requeue_lost_jobs`` (cron, every 30 s) enqueues again jobs whose queue entry Redis lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from arq import Retry, cron, func
from arq.connections import RedisSettings

from services.common.blobstore import LocalBlobStore
from services.common.config import WorkerSettings
from services.common.db import create_pool
from services.common.errors import ClipMindError, NotFound
from services.common.grpc_server import configure_logging
from services.common.inference import make_inference
from services.common.job_store import JobStore
from services.common.model_health import check_weight_settings, log_model_status
from services.common.queue import PROCESS_VIDEO, QUEUE_NAME, ArqJobQueue, ProgressBus
from services.common.records import DeadLetter, Job
from services.common.store import VideoStore
from services.pipeline.jobs import JobControl
from services.pipeline.processor import STAGE_WEIGHTS, ProcessorConfig, VideoProcessor
from services.pipeline.reporter import JobCancelled, JobReporter

log = logging.getLogger("clipmind.worker")

# Errors that re-running cannot fix: fail at once instead of retrying.
PERMANENT_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "OUT_OF_RANGE"})


async def startup(ctx: dict[str, Any]) -> None:
    settings: WorkerSettings = ctx["settings"]
    pool = await create_pool(settings.database_url, max_size=4)
    bus = ProgressBus.connect(settings.redis_url)
    videos, jobs = VideoStore(pool), JobStore(pool)
    inference = make_inference(settings)
    await log_model_status(inference, "worker")
    reporter = JobReporter(jobs, bus)
    blobs = LocalBlobStore(settings.blob_dir, settings.media_base_url)
    ctx.update(
        pool=pool, bus=bus, videos=videos, jobs=jobs, inference=inference, reporter=reporter, blobs=blobs,
        control=JobControl(jobs, bus, ArqJobQueue(ctx["redis"])),
        processor=VideoProcessor(
            videos, jobs, reporter, blobs, inference,
            ProcessorConfig(settings.scene_threshold, settings.min_scene_s, settings.clip_batch_size),
        ),
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    for name in ("inference", "bus"):
        if name in ctx:
            await ctx[name].close()
    if "pool" in ctx:
        await ctx["pool"].close()


async def requeue_lost_jobs(ctx: dict[str, Any]) -> str:
    """Cron (every 30 s, one worker at a time): enqueue again the jobs whose queue entry was lost."""
    requeued = await ctx["control"].requeue_lost(idle_s=ctx["settings"].requeue_idle_s)
    return f"re-queued {len(requeued)} job(s)"


def _backoff_s(attempt: int) -> float:
    return float(min(60, 2 ** attempt))


async def process_video(ctx: dict[str, Any], job_id: str) -> str:
    jobs: JobStore = ctx["jobs"]
    settings: WorkerSettings = ctx["settings"]
    try:
        job = await jobs.get(uuid.UUID(job_id))
    except NotFound:
        return "job no longer exists"
    if job.terminal:
        return f"job already {job.state}"
    attempt = int(ctx.get("job_try", 1))
    max_attempts = min(job.max_attempts, settings.max_tries)
    started = time.monotonic()
    try:
        await ctx["processor"].run(job, attempt)
        return "succeeded"
    except JobCancelled:
        return "cancelled"
    except NotFound:
        await ctx["blobs"].delete_prefix(f"videos/{job.video_id}")  # deleted mid-run: drop what we wrote
        return "video deleted while processing"
    except asyncio.CancelledError:
        # arq cancels the task on its job timeout (final: arq will not run it again) and on shutdown
        # (the job is picked up again later: leave it as it is).
        if time.monotonic() - started >= settings.job_timeout_s - 1:
            await asyncio.shield(_fail(ctx, job, attempt, f"timed out after {settings.job_timeout_s} s", True))
        raise
    except Exception as exc:
        permanent = isinstance(exc, ClipMindError) and exc.code in PERMANENT_CODES
        message = exc.message if isinstance(exc, ClipMindError) else f"{type(exc).__name__}: {exc}"
        final = permanent or attempt >= max_attempts
        log.warning("job %s attempt %d/%d failed (%s): %s", job.id, attempt, max_attempts,
                    "final" if final else "will retry", message, exc_info=not permanent)
        try:
            await _fail(ctx, job, attempt, message, final)
        except JobCancelled:
            return "cancelled"
        except Exception as bookkeeping:  # Postgres/Redis trouble: let arq try the whole job again
            log.warning("job %s: could not record the failure (%s); retrying", job.id, bookkeeping)
            raise Retry(defer=_backoff_s(attempt)) from exc
        if not final:
            raise Retry(defer=_backoff_s(attempt)) from exc
        return "failed"


async def _fail(ctx: dict[str, Any], job: Job, attempt: int, message: str, final: bool) -> None:
    """Record a failed attempt; a final one also fails the video and leaves a dead letter."""
    await ctx["reporter"].for_job(job.id, STAGE_WEIGHTS).failed(message, final=final)
    if final:
        await ctx["videos"].update_fields(job.video_id, state="FAILED", failure_reason=message)
        await ctx["jobs"].add_dead_letter(DeadLetter(uuid.uuid4(), job.id, job.video_id, message, attempt))


def arq_settings(settings: WorkerSettings) -> dict[str, Any]:
    return {
        "functions": [
            func(process_video, name=PROCESS_VIDEO, max_tries=settings.max_tries,
                 timeout=settings.job_timeout_s),
        ],
        "cron_jobs": [cron(requeue_lost_jobs, second={0, 30}, run_at_startup=True, timeout=120)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": QUEUE_NAME,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        "ctx": {"settings": settings},
        "keep_result": 3600,
    }


def main() -> None:
    from arq.worker import run_worker

    settings = WorkerSettings()
    configure_logging(settings.log_level)
    check_weight_settings(settings)
    run_worker(arq_settings(settings))


if __name__ == "__main__":
    main()
