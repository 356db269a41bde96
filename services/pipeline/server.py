"""Composition root of the PipelineService process."""

from __future__ import annotations

import asyncio

import grpc.aio
from clipmind.pipeline.v1 import pipeline_service_pb2, pipeline_service_pb2_grpc

from services.common.config import PipelineSettings
from services.common.db import open_database
from services.common.grpc_server import configure_logging, run_server
from services.common.job_store import JobStore
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue
from services.pipeline import internal_servicer
from services.pipeline.jobs import JobControl
from services.pipeline.servicer import PipelineServicer
from services.pipeline.watch import JobWatcher


async def serve(settings: PipelineSettings) -> None:
    pool = await open_database(settings)
    bus = ProgressBus.connect(settings.redis_url)
    queue = await ArqJobQueue.connect(settings.redis_url)
    jobs = JobStore(pool)
    watcher = JobWatcher(jobs, bus, heartbeat_s=settings.watch_heartbeat_s, poll_s=settings.watch_poll_s,
                         max_streams=settings.max_watch_streams)
    control = JobControl(jobs, bus, queue)
    servicer = PipelineServicer(jobs, control, watcher)
    internal = internal_servicer.PipelineInternalServicer(control)

    def register(server: grpc.aio.Server) -> list[str]:
        pipeline_service_pb2_grpc.add_PipelineServiceServicer_to_server(servicer, server)
        return [pipeline_service_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
                internal_servicer.register(server, internal)]

    await run_server(name="pipeline", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_draining=[watcher.drain], on_stop=[queue.close, bus.close, pool.close],
                     grace_s=settings.shutdown_grace_s, internal_token=settings.internal_token.get_secret_value())


def main() -> None:
    settings = PipelineSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
