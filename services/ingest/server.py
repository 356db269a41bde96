"""Composition root of the ingest process: IngestService + IdentityService over gRPC, blobs over HTTP."""

from __future__ import annotations

from services.common.blobstore import LocalBlobStore
from services.common.config import IngestSettings
from services.common.db import create_pool
from services.common.grpc_server import configure_logging, run_server
from services.common.queue import ArqJobQueue
from services.common.store import UploadStore, VideoStore
from services.ingest.ingestor import VideoIngestor
from services.ingest.media_http import start_media_server
from services.ingest.servicer import IngestServicer, register


async def serve(settings: IngestSettings) -> None:
    pool = await create_pool(settings.database_url)
    queue = await ArqJobQueue.connect(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_dir, settings.media_base_url)
    videos = VideoStore(pool)
    ingestor = VideoIngestor(
        videos, UploadStore(pool), blobs, queue, settings.blob_dir.parent / "staging",
        max_upload_bytes=settings.max_upload_bytes, max_chunk_bytes=settings.upload_chunk_bytes,
    )
    media = await start_media_server(blobs, settings.grpc_host, settings.media_port)
    servicer = IngestServicer(ingestor, videos, blobs)
    await run_server(
        name="ingest", host=settings.grpc_host, port=settings.grpc_port,
        register=lambda server: register(server, servicer),
        on_stop=[media.cleanup, queue.close, pool.close],
    )


def main() -> None:
    import asyncio

    settings = IngestSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
