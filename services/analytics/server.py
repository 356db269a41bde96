"""Composition root of the analytics process.

It owns the search log and the usage record (schema ``analytics``, its own migrations in
``services/analytics/migrations``): searches come from the search service over
``AnalyticsInternalService.LogSearches``, usage facts from ingest and the pipeline over ``RecordUsage``; the public
AnalyticsService (``servicer``) records interactions against that log and reports on all of it.
"""

from __future__ import annotations

import asyncio

import grpc.aio
from clipmind.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc

from services.analytics import internal_servicer
from services.analytics.interactions import InteractionStore
from services.analytics.reports import Reports
from services.analytics.search_log import MIGRATIONS, SCHEMA, SearchLogStore
from services.analytics.servicer import AnalyticsServicer
from services.analytics.usage import UsageStore
from services.common.config import AnalyticsSettings
from services.common.db import open_database
from services.common.grpc_client import InternalChannels
from services.common.grpc_server import configure_logging, run_server
from services.common.identity_client import process_authenticator, process_request_limits


async def serve(settings: AnalyticsSettings) -> None:
    pool = await open_database(settings, max_size=4, migrations=MIGRATIONS, schema=SCHEMA)
    channels = InternalChannels(settings)
    authenticator, revocations = process_authenticator(settings, channels)
    request_limits, windows = process_request_limits(settings)
    usage = UsageStore(pool)
    log_servicer = internal_servicer.AnalyticsInternalServicer(SearchLogStore(pool), usage)
    servicer = AnalyticsServicer(InteractionStore(pool, search_wait_s=settings.interaction_search_wait_s),
                                 Reports(pool), usage)

    def register(server: grpc.aio.Server) -> list[str]:
        analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
        return [analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
                internal_servicer.register(server, log_servicer)]

    await run_server(name="analytics", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_stop=[windows.close, revocations.close, channels.close, pool.close],
                     grace_s=settings.shutdown_grace_s, authenticator=authenticator, request_limits=request_limits,
                     reflection=settings.grpc_reflection, metrics_port=settings.metrics_port,
                     metrics_host=settings.metrics_host)


def main() -> None:
    settings = AnalyticsSettings()
    configure_logging(settings.log_level, settings.service_name, settings.log_format)
    asyncio.run(serve(settings))
