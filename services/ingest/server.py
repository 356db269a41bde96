"""Composition root of the ingest process: IngestService and IngestInternalService over gRPC,
blobs over HTTP, and the relay of ingest's outbox (``relays``)."""

from __future__ import annotations

import asyncio
import logging

import grpc.aio
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2_grpc as analytics_grpc
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2_grpc as pipeline_grpc
from clipmind.search.internal.v1 import search_internal_service_pb2_grpc as search_grpc

from services.common.blobstore import LocalBlobStore
from services.common.config import IngestSettings
from services.common.db import open_database
from services.common.grpc_client import InternalChannels
from services.common.grpc_server import configure_logging, run_server
from services.common.identity_client import media_signer, process_authenticator, process_request_limits
from services.common.outbox import OutboxRelay
from services.ingest import internal_servicer, relays, servicer
from services.ingest.ingestor import VideoIngestor
from services.ingest.media_http import start_media_server
from services.ingest.store import MIGRATIONS, SCHEMA, UploadStore, VideoStore

log = logging.getLogger("clipmind.ingest")
STAGING_SWEEP_S = 600.0


async def serve(settings: IngestSettings) -> None:
    pool = await open_database(settings, migrations=MIGRATIONS, schema=SCHEMA)
    signer = media_signer(settings)  # thumbnail and playback links are signed, and the media server checks them
    blobs = LocalBlobStore(settings.blob_dir, settings.media_base_url, signer)
    videos = VideoStore(pool)
    channels = InternalChannels(settings)
    authenticator, revocations = process_authenticator(settings, channels)
    request_limits, windows = process_request_limits(settings)
    pipeline = channels.stub(pipeline_grpc.PipelineInternalServiceStub, settings.pipeline_url)
    search = channels.stub(search_grpc.SearchInternalServiceStub, settings.search_url)
    analytics = channels.stub(analytics_grpc.AnalyticsInternalServiceStub, settings.analytics_url)
    relay = OutboxRelay(pool, relays.handlers(videos, pipeline, search, analytics), name="ingest")
    relay.start()
    ingestor = VideoIngestor(
        videos, UploadStore(pool), blobs, relay, settings.blob_dir.parent / "staging",
        max_upload_bytes=settings.max_upload_bytes, max_chunk_bytes=settings.upload_chunk_bytes,
        min_free_disk_bytes=settings.min_free_disk_bytes,
    )
    media = await start_media_server(blobs, settings.grpc_host, settings.media_port, verifier=signer)
    public = servicer.IngestServicer(ingestor, blobs)
    internal = internal_servicer.IngestInternalServicer(videos, relay)

    def register(server: grpc.aio.Server) -> list[str]:
        return [*servicer.register(server, public), internal_servicer.register(server, internal)]

    sweeper = asyncio.create_task(_sweep_staging_forever(ingestor, grace_s=settings.orphan_blob_grace_s))

    async def stop_sweeper() -> None:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)

    await run_server(
        name="ingest", host=settings.grpc_host, port=settings.grpc_port,
        register=register,
        on_stop=[stop_sweeper, media.cleanup, relay.stop, windows.close, revocations.close, channels.close, pool.close],
        grace_s=settings.shutdown_grace_s, authenticator=authenticator, request_limits=request_limits,
        reflection=settings.grpc_reflection,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
    )


async def _sweep_staging_forever(ingestor: VideoIngestor, interval_s: float = STAGING_SWEEP_S, *,
                                 grace_s: float) -> None:
    """Expired uploads and leftover staged files, and orphan blobs (``VideoIngestor.sweep_blobs``), at start and
    every ``interval_s``."""
    while True:
        try:
            deleted = await ingestor.sweep_staging()
            if deleted:
                log.info("staging sweep deleted %d file(s)", deleted)
            await ingestor.sweep_blobs(grace_s=grace_s)
        except Exception:  # the database may be briefly away: try again next round
            log.warning("staging sweep failed", exc_info=True)
        await asyncio.sleep(interval_s)


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level, settings.service_name, settings.log_format)
    asyncio.run(serve(settings))
