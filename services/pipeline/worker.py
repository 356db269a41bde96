"""arq worker: runs the processing stages of queued jobs.

Composition root of the worker process: ``startup`` builds settings, pool, stores, blob store, inference
client, the processor and the ``JobRunner`` (``services.pipeline.runs``: claim, lease, fencing, retries);
``process_video`` only hands a queue entry to the runner. ``sweep`` (an arq cron, every
``sweep_every_s``) takes over runs whose worker died and enqueues again jobs whose queue entry was lost.

``ResilientWorker`` keeps the process alive through a Redis outage: arq's own loop exits on the first
connection error, so its poll iteration is retried with capped backoff instead, and running jobs go on
(their state lives in PostgreSQL). On SIGTERM the worker stops taking jobs; running jobs hand their job
back at the next stage boundary, or when ``shutdown_grace_s`` runs out, without using an attempt.

Metrics: the worker is no gRPC server, so it serves its own ``GET /metrics`` (``CLIPMIND_METRICS_PORT``) from
``startup`` to ``shutdown``. Stage durations, attempts and dead letters are counted where they happen; jobs by
state and queue depth are counts of shared stores (PostgreSQL, Redis), which ``refresh_gauges`` reads every
``GAUGE_REFRESH_S`` on the event loop into plain gauges. Not read at scrape time: the exposition runs in its
own thread, and a collector that waited there on the loop's connections could hang a scrape, or the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from typing import Any

from arq import cron, func
from clipmind.analytics.internal.v1.analytics_internal_service_pb2_grpc import AnalyticsInternalServiceStub
from clipmind.ingest.internal.v1.ingest_internal_service_pb2_grpc import IngestInternalServiceStub
from clipmind.search.internal.v1.search_internal_service_pb2_grpc import SearchInternalServiceStub
from redis.exceptions import RedisError

from services.common import request_context, tracing, usage_events
from services.common.blob_sweep import sweep_orphans
from services.common.blobstore import LocalBlobStore
from services.common.config import WorkerSettings
from services.common.db import open_database
from services.common.grpc_client import InternalChannels
from services.common.grpc_server import configure_logging
from services.common.metrics import JOBS, OLDEST_RUN, QUEUE_DEPTH, start_metrics_server
from services.common.model_health import check_weight_settings, log_model_status
from services.common.outbox import OutboxRelay
from services.common.progress import ProgressBus
from services.common.queue import (
    PROCESS_VIDEO,
    ArqJobQueue,
    PriorityWorker,
    QueueRoutes,
    arq_redis,
    job_from_json,
    job_to_json,
)
from services.inference.factory import make_inference
from services.pipeline.compilation_store import CompilationStore
from services.pipeline.ingest_client import FACT_WAIT_S, IngestClient, relay_handlers
from services.pipeline.job_store import MIGRATIONS, SCHEMA, JobStore
from services.pipeline.jobs import JobControl
from services.pipeline.processor import ProcessorConfig, VideoProcessor
from services.pipeline.records import TERMINAL_JOB_STATES
from services.pipeline.renderer import CompilationRenderer
from services.pipeline.reporter import JobReporter
from services.pipeline.runs import JobRunner, RunPolicy
from services.pipeline.search_index import SearchIndexClient

log = logging.getLogger("clipmind.worker")

# Errors of Redis being away; the worker waits them out instead of exiting.
REDIS_ERRORS = (RedisError, OSError, ConnectionError, TimeoutError)
# How often the worker re-reads jobs by state and the queue's depth for its gauges.
GAUGE_REFRESH_S = 5.0
JOB_STATES = ("QUEUED", "RUNNING", *sorted(TERMINAL_JOB_STATES))


def run_policy(settings: WorkerSettings) -> RunPolicy:
    return RunPolicy(
        lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s, cancel_poll_s=settings.cancel_poll_s,
        retry_base_s=settings.retry_base_s, job_timeout_s=settings.job_timeout_s,
    )


async def refresh_gauges(jobs: JobStore, queue: ArqJobQueue, *, every_s: float = GAUGE_REFRESH_S) -> None:
    """Keep ``clipmind_worker_jobs{state}``, ``clipmind_worker_oldest_run_seconds`` and
    ``clipmind_worker_queue_depth{queue}`` current (until cancelled);
    a store that is away leaves the last values and is asked again next time."""
    while True:
        try:
            counts = await jobs.count_by_state()
            for state in JOB_STATES:
                JOBS.labels(state).set(counts.get(state, 0))
            OLDEST_RUN.set(await jobs.oldest_run_age_s())
        except Exception as exc:
            log.debug("job counts not refreshed: %s", exc)
        try:
            for name, _, depth in await queue.queues():  # every routed queue, whichever this worker polls
                QUEUE_DEPTH.labels(name).set(depth)
        except Exception as exc:
            log.debug("queue depth not refreshed: %s", exc)
        await asyncio.sleep(every_s)


async def startup(ctx: dict[str, Any]) -> None:
    settings: WorkerSettings = ctx["settings"]
    ctx["stop_metrics"] = start_metrics_server(settings.metrics_port, settings.metrics_host or "127.0.0.1")
    pool = await open_database(settings, migrations=MIGRATIONS, schema=SCHEMA)
    bus = ProgressBus.connect(settings.redis_url)
    channels = InternalChannels(settings)
    ingest = channels.stub(IngestInternalServiceStub, settings.ingest_url)
    analytics = channels.stub(AnalyticsInternalServiceStub, settings.analytics_url)
    relay = OutboxRelay(pool, {**relay_handlers(ingest), **usage_events.handler(analytics)}, name="worker")
    relay.start()
    jobs = JobStore(pool, on_fact=lambda fact: relay.deliver_soon(fact, FACT_WAIT_S))
    videos = IngestClient(ingest)
    index = SearchIndexClient(channels.stub(SearchInternalServiceStub, settings.search_url))
    inference = make_inference(settings)
    await log_model_status(inference, "worker")
    reporter = JobReporter(jobs, bus)
    blobs = LocalBlobStore(settings.blob_dir, settings.media_base_url)
    queue = ArqJobQueue(ctx["redis"], QueueRoutes.of(settings))
    compilations = CompilationStore(pool)
    processor = VideoProcessor(
        videos, index, reporter, blobs, inference,
        ProcessorConfig(settings.scene_threshold, settings.min_scene_s, settings.clip_batch_size,
                        settings.search_wait_s, settings.ingest_wait_s, settings.keyframe_interval_s),
    )
    ctx.update(
        pool=pool, bus=bus, inference=inference, channels=channels, relay=relay,
        gauges=asyncio.create_task(refresh_gauges(jobs, queue), name="worker-gauges"),
        control=JobControl(jobs, bus, queue),
        runner=JobRunner(jobs, reporter, queue, blobs, processor, run_policy(settings),
                         worker=f"{socket.gethostname()}:{os.getpid()}",
                         renderer=CompilationRenderer(compilations, videos, reporter, blobs)),
        blobs=blobs, compilations=compilations,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    if "gauges" in ctx:
        ctx["gauges"].cancel()
    if "relay" in ctx:
        await ctx["relay"].stop()
    for name in ("inference", "bus", "channels"):
        if name in ctx:
            await ctx[name].close()
    if "pool" in ctx:
        await ctx["pool"].close()
    if ctx.get("stop_metrics") is not None:
        ctx["stop_metrics"]()


async def sweep(ctx: dict[str, Any]) -> str:
    """Cron (one worker at a time): take over runs whose worker died, re-queue jobs whose entry was lost, purge dead
    letters past their retention."""
    settings: WorkerSettings = ctx["settings"]
    control: JobControl = ctx["control"]
    taken = await control.take_over_expired(idle_s=max(settings.lease_s, settings.requeue_idle_s))
    requeued = await control.requeue_lost(idle_s=settings.requeue_idle_s)
    purged = 0
    if settings.dead_letter_retention_days > 0:
        purged = await control.purge_dead_letters(older_than_s=settings.dead_letter_retention_days * 86400)
    return f"took over {len(taken)} run(s), re-queued {len(requeued)} job(s), purged {purged} dead letter(s)"


async def process_video(ctx: dict[str, Any], job_id: str, trace: dict[str, str] | None = None) -> str:
    """One queue entry (arq job id ``ctx["job_id"]``, our queue key) of job ``job_id``. Its queue key
    (``<job>:<generation>``) is the request id of the run: in its log lines and on its calls to ingest and search.
    ``trace``: the W3C context of whoever enqueued it (``services.common.queue.trace_kwargs``; absent in older
    payloads): the run is a ``job.run`` span in that trace (``services.common.tracing.continued_span``)."""
    with request_context.bind(request_id=ctx["job_id"]), tracing.continued_span(
        "job.run", trace, attributes={"clipmind.job_id": job_id, "clipmind.queue_key": ctx["job_id"],
                                      "messaging.system": "arq", "messaging.operation": "process"},
    ):
        return await ctx["runner"].run(uuid.UUID(job_id), ctx["job_id"], stopping=ctx["stopping"])


class ResilientWorker(PriorityWorker):
    """arq's worker (taking entries in priority order), riding out Redis outages and handing jobs back on SIGTERM
    (see the module doc)."""

    _outage_delay = 0.5

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_ERRORS as exc:
            log.warning("Redis unreachable (%s: %s); polling again in %.1f s", type(exc).__name__, exc,
                        self._outage_delay)
            await asyncio.sleep(self._outage_delay)
            self._outage_delay = min(self._outage_delay * 2, 10.0)
            return
        self._outage_delay = 0.5

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        stopping = self.ctx.get("stopping")
        if isinstance(stopping, asyncio.Event):
            stopping.set()  # running jobs hand their job back at the next stage boundary
        super().handle_sig_wait_for_completion(signum)


async def sweep_blobs(ctx: dict[str, Any]) -> str:
    """Cron (one worker at a time, every 10 minutes): remove the files of compilations that have no row."""
    settings: WorkerSettings = ctx["settings"]
    removed = await sweep_orphans(ctx["blobs"], "compilations", ctx["compilations"].existing,
                                  grace_s=settings.orphan_blob_grace_s)
    return f"removed {len(removed)} orphan compilation file(s)"


def arq_settings(settings: WorkerSettings) -> dict[str, Any]:
    every = settings.sweep_every_s
    return {
        "functions": [
            # One queue entry runs once: attempts, retries and take-overs are the runner's (new entries).
            func(process_video, name=PROCESS_VIDEO, max_tries=1, timeout=settings.job_timeout_s),
        ],
        "cron_jobs": [cron(sweep, second=set(range(0, 60, every)), run_at_startup=True, timeout=120),
                      cron(sweep_blobs, minute=set(range(0, 60, 10)), second=7, timeout=600)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_pool": arq_redis(settings.redis_url),
        "job_serializer": job_to_json,  # results too: never pickle
        "job_deserializer": job_from_json,
        "queue_name": settings.worker_queue,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        "job_completion_wait": settings.shutdown_grace_s,
        "ctx": {"settings": settings, "stopping": asyncio.Event()},
        "keep_result": 3600,
    }


def main() -> None:
    settings = WorkerSettings()
    configure_logging(settings.log_level, settings.service_name, settings.log_format)
    check_weight_settings(settings)
    ResilientWorker(**arq_settings(settings)).run()


if __name__ == "__main__":
    main()
