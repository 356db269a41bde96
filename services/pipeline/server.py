"""Composition root of the pipeline process: PipelineService and PipelineInternalService, and a relay of the
pipeline's outbox (cancels reach ingest through it)."""

from __future__ import annotations

import asyncio

import grpc.aio
from clipmind.analytics.internal.v1.analytics_internal_service_pb2_grpc import AnalyticsInternalServiceStub
from clipmind.ingest.internal.v1.ingest_internal_service_pb2_grpc import IngestInternalServiceStub
from clipmind.pipeline.v1 import pipeline_service_pb2, pipeline_service_pb2_grpc
from clipmind.search.internal.v1.search_internal_service_pb2_grpc import SearchInternalServiceStub

from services.common import usage_events
from services.common.blobstore import LocalBlobStore
from services.common.config import PipelineSettings
from services.common.db import open_database
from services.common.grpc_client import InternalChannels
from services.common.grpc_server import configure_logging, run_server
from services.common.identity_client import media_signer, process_authenticator, process_request_limits
from services.common.outbox import OutboxRelay
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue, QueueRoutes
from services.pipeline import internal_servicer
from services.pipeline.clip_sources import ClipSourcesClient
from services.pipeline.compilation_store import CompilationStore
from services.pipeline.compilations import CompilationControl
from services.pipeline.ingest_client import FACT_WAIT_S, IngestClient, relay_handlers
from services.pipeline.job_store import MIGRATIONS, SCHEMA, JobStore
from services.pipeline.jobs import JobControl
from services.pipeline.servicer import PipelineServicer
from services.pipeline.watch import JobWatcher


async def serve(settings: PipelineSettings) -> None:
    pool = await open_database(settings, migrations=MIGRATIONS, schema=SCHEMA)
    bus = ProgressBus.connect(settings.redis_url)
    queue = await ArqJobQueue.connect(settings.redis_url, QueueRoutes.of(settings))
    channels = InternalChannels(settings)
    authenticator, revocations = process_authenticator(settings, channels)
    request_limits, windows = process_request_limits(settings)
    analytics = channels.stub(AnalyticsInternalServiceStub, settings.analytics_url)
    ingest = channels.stub(IngestInternalServiceStub, settings.ingest_url)
    relay = OutboxRelay(pool, {**relay_handlers(ingest), **usage_events.handler(analytics)}, name="pipeline")
    relay.start()
    jobs = JobStore(pool, on_fact=lambda fact: relay.deliver_soon(fact, FACT_WAIT_S))
    watcher = JobWatcher(jobs, bus, heartbeat_s=settings.watch_heartbeat_s, poll_s=settings.watch_poll_s,
                         max_streams=settings.max_watch_streams)
    control = JobControl(jobs, bus, queue)
    # The rendered compilations' links are signed like ingest's (its media server checks them).
    blobs = LocalBlobStore(settings.blob_dir, settings.media_base_url, media_signer(settings))
    sources = ClipSourcesClient(channels.stub(SearchInternalServiceStub, settings.search_url), analytics)
    compilations = CompilationControl(CompilationStore(pool), jobs, IngestClient(ingest), queue, blobs, sources)
    servicer = PipelineServicer(control, watcher, compilations, blobs)
    internal = internal_servicer.PipelineInternalServicer(control)

    def register(server: grpc.aio.Server) -> list[str]:
        pipeline_service_pb2_grpc.add_PipelineServiceServicer_to_server(servicer, server)
        return [pipeline_service_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
                internal_servicer.register(server, internal)]

    await run_server(name="pipeline", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_draining=[watcher.drain],
                     on_stop=[relay.stop, windows.close, revocations.close, channels.close, queue.close, bus.close,
                              pool.close],
                     grace_s=settings.shutdown_grace_s, authenticator=authenticator, request_limits=request_limits,
                     reflection=settings.grpc_reflection, metrics_port=settings.metrics_port,
                     metrics_host=settings.metrics_host)


def main() -> None:
    settings = PipelineSettings()
    configure_logging(settings.log_level, settings.service_name, settings.log_format)
    asyncio.run(serve(settings))
