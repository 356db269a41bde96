"""Composition root of the SearchService process."""

from __future__ import annotations

import asyncio
import logging

import grpc.aio
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2_grpc as analytics_grpc
from clipmind.search.v1 import search_service_pb2, search_service_pb2_grpc

from services.common.blobstore import LocalBlobStore
from services.common.config import SearchSettings
from services.common.db import open_database
from services.common.grpc_client import InternalChannels
from services.common.grpc_server import INTERNAL_MAX_MESSAGE_BYTES, configure_logging, run_server
from services.common.identity_client import media_signer, process_authenticator, process_request_limits
from services.common.model_health import check_weight_settings, log_model_status, model_health
from services.common.outbox import OutboxRelay
from services.inference.factory import make_inference
from services.search import internal_servicer, search_log
from services.search.browse import Browser
from services.search.clip_store import MIGRATIONS, SCHEMA, ClipStore
from services.search.query_cache import QueryCache
from services.search.retrieval import CONNECTION_SETTINGS, PgRetrieval
from services.search.searcher import Searcher, decode_ranking, encode_ranking
from services.search.servicer import SearchServicer
from services.search.vectors import PgVectorIndex

log = logging.getLogger("clipmind.search")


async def serve(settings: SearchSettings) -> None:
    pool = await open_database(settings, migrations=MIGRATIONS, schema=SCHEMA, vectors=True,
                               server_settings=CONNECTION_SETTINGS)
    clips = ClipStore(pool, text_config=settings.text_search_config)
    inference = make_inference(settings)
    statuses = await log_model_status(inference, "search")
    stale = await clips.stale_models(statuses["sbert"].model_id, statuses["clip_image"].model_id)
    for key, count in stale.items():
        log.warning("%d videos have %s vectors from another model than the one in use; they are left out of "
                    "search until reprocessed (reindex needed)", count, key)
    blobs = LocalBlobStore(settings.blob_dir, settings.media_base_url, media_signer(settings))  # signed links
    channels = InternalChannels(settings)
    authenticator, revocations = process_authenticator(settings, channels)
    request_limits, windows = process_request_limits(settings)
    analytics = channels.stub(analytics_grpc.AnalyticsInternalServiceStub, settings.analytics_url)

    async def deliver_search_log(payload: bytes) -> None:
        await analytics.LogSearches(analytics_pb.LogSearchesRequest.FromString(payload))

    relay = OutboxRelay(pool, {search_log.TOPIC: deliver_search_log}, name="search")
    logged = search_log.SearchLogBuffer(pool, relay)
    relay.start()
    logged.start()
    retrieval = PgRetrieval(pool, text_config=settings.text_search_config)
    cache = None
    if settings.query_cache_ttl_s > 0:
        cache = QueryCache.from_url(settings.redis_url, l1_size=settings.query_cache_entries,
                                    ttl_s=settings.query_cache_ttl_s, encode=encode_ranking, decode=decode_ranking)
        await cache.start()
    searcher = Searcher(clips, retrieval, PgVectorIndex(pool), inference, logged,
                        candidates=settings.search_candidates, max_page_size=settings.max_page_size,
                        allow_random_weights=settings.allow_random_weights_in_ranking,
                        default_fusion=settings.default_fusion, cache=cache)
    servicer = SearchServicer(searcher, blobs, Browser(clips))
    internal = internal_servicer.SearchInternalServicer(clips, cache)

    def register(server: grpc.aio.Server) -> list[str]:
        search_service_pb2_grpc.add_SearchServiceServicer_to_server(servicer, server)
        return [search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
                internal_servicer.register(server, internal)]

    await run_server(name="search", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_stop=[logged.stop, relay.stop, *([cache.close] if cache else []),
                              windows.close, revocations.close, channels.close,
                              inference.close, pool.close],
                     component_health=model_health(inference), grace_s=settings.shutdown_grace_s,
                     authenticator=authenticator, request_limits=request_limits, reflection=settings.grpc_reflection,
                     max_message_bytes=INTERNAL_MAX_MESSAGE_BYTES, metrics_port=settings.metrics_port,
                     metrics_host=settings.metrics_host)


def main() -> None:
    settings = SearchSettings()
    configure_logging(settings.log_level, settings.service_name, settings.log_format)
    check_weight_settings(settings)
    asyncio.run(serve(settings))
