"""Composition root of the PipelineService process."""

from __future__ import annotations

import asyncio

import grpc.aio
from clipmind.pipeline.v1 import pipeline_service_pb2, pipeline_service_pb2_grpc

from services.common.config import PipelineSettings
from services.common.db import create_pool
from services.common.grpc_server import configure_logging, run_server
from services.common.job_store import JobStore
from services.common.queue import ArqJobQueue, ProgressBus
from services.pipeline.jobs import JobControl
from services.pipeline.servicer import PipelineServicer


async def serve(settings: PipelineSettings) -> None:
    pool = await create_pool(settings.database_url)
    bus = ProgressBus.connect(settings.redis_url)
    queue = await ArqJobQueue.connect(settings.redis_url)
    jobs = JobStore(pool)
    servicer = PipelineServicer(jobs, JobControl(jobs, bus, queue))

    def register(server: grpc.aio.Server) -> list[str]:
        pipeline_service_pb2_grpc.add_PipelineServiceServicer_to_server(servicer, server)
        return [pipeline_service_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name]

    await run_server(name="pipeline", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_stop=[queue.close, bus.close, pool.close])


def main() -> None:
    settings = PipelineSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
