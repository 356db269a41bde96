"""Composition root of the analytics process.

It owns the search log (schema ``analytics``, its own migrations in ``services/analytics/migrations``) and
takes searches from the search service over ``AnalyticsInternalService.LogSearches``. The public
AnalyticsService answers UNIMPLEMENTED until the analytics issue builds its reports on that log.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import grpc.aio
from clipmind.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc

from services.analytics import internal_servicer
from services.analytics.search_log import MIGRATIONS, SCHEMA, SearchLogStore
from services.common.config import AnalyticsSettings
from services.common.db import open_database
from services.common.errors import Unimplemented
from services.common.grpc_client import InternalChannels
from services.common.grpc_server import Context, configure_logging, run_server
from services.common.identity_client import process_authenticator, process_request_limits


def _not_yet(method: str) -> NoReturn:
    raise Unimplemented(f"AnalyticsService.{method} is not implemented yet", reason="NOT_IMPLEMENTED")


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    async def RecordInteraction(self, request: Any, context: Context) -> Any:
        _not_yet("RecordInteraction")

    async def GetSearchStats(self, request: Any, context: Context) -> Any:
        _not_yet("GetSearchStats")

    async def ListPopularQueries(self, request: Any, context: Context) -> Any:
        _not_yet("ListPopularQueries")

    async def ListPopularClips(self, request: Any, context: Context) -> Any:
        _not_yet("ListPopularClips")

    async def GetUsage(self, request: Any, context: Context) -> Any:
        _not_yet("GetUsage")


async def serve(settings: AnalyticsSettings) -> None:
    pool = await open_database(settings, max_size=4, migrations=MIGRATIONS, schema=SCHEMA)
    channels = InternalChannels(settings)
    authenticator, revocations = process_authenticator(settings, channels)
    request_limits, windows = process_request_limits(settings)
    log_servicer = internal_servicer.AnalyticsInternalServicer(SearchLogStore(pool))

    def register(server: grpc.aio.Server) -> list[str]:
        analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(AnalyticsServicer(), server)
        return [analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
                internal_servicer.register(server, log_servicer)]

    await run_server(name="analytics", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_stop=[windows.close, revocations.close, channels.close, pool.close],
                     grace_s=settings.shutdown_grace_s, authenticator=authenticator, request_limits=request_limits,
                     reflection=settings.grpc_reflection)


def main() -> None:
    settings = AnalyticsSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
