"""Composition root of the SearchService process."""

from __future__ import annotations

import asyncio

import grpc.aio
from clipmind.search.v1 import search_service_pb2, search_service_pb2_grpc

from services.common.blobstore import LocalBlobStore
from services.common.config import SearchSettings
from services.common.db import create_pool
from services.common.grpc_server import configure_logging, run_server
from services.common.inference import TritonTextEmbedder
from services.common.store import ClipStore
from services.common.vectors import PgVectorIndex
from services.search.searcher import Searcher
from services.search.servicer import SearchServicer


async def serve(settings: SearchSettings) -> None:
    pool = await create_pool(settings.database_url)
    embedder = TritonTextEmbedder(settings.triton_url, timeout_s=settings.inference_timeout_s)
    blobs = LocalBlobStore(settings.blob_dir, settings.media_base_url)
    searcher = Searcher(ClipStore(pool), PgVectorIndex(pool), embedder, max_page_size=settings.max_page_size)
    servicer = SearchServicer(searcher, blobs)

    def register(server: grpc.aio.Server) -> list[str]:
        search_service_pb2_grpc.add_SearchServiceServicer_to_server(servicer, server)
        return [search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name]

    await run_server(name="search", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_stop=[embedder.close, pool.close])


def main() -> None:
    settings = SearchSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
