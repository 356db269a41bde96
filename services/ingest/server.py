"""Composition root of the ingest process: IngestService + IdentityService over gRPC, blobs over HTTP."""

from __future__ import annotations

import asyncio
import logging

from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2 as pipeline_pb
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2_grpc as pipeline_grpc

from services.common.blobstore import LocalBlobStore
from services.common.config import IngestSettings
from services.common.db import open_database
from services.common.errors import NotFound
from services.common.grpc_client import InternalChannels
from services.common.grpc_server import configure_logging, run_server
from services.common.outbox import OutboxRelay
from services.common.store import SUBMIT_JOB_TOPIC, UploadStore, VideoStore
from services.ingest.ingestor import VideoIngestor
from services.ingest.media_http import start_media_server
from services.ingest.servicer import IngestServicer, register

log = logging.getLogger("clipmind.ingest")
STAGING_SWEEP_S = 600.0


async def serve(settings: IngestSettings) -> None:
    pool = await open_database(settings)
    blobs = LocalBlobStore(settings.blob_dir, settings.media_base_url)
    videos = VideoStore(pool)
    channels = InternalChannels(settings)
    pipeline = channels.stub(pipeline_grpc.PipelineInternalServiceStub, settings.pipeline_url)

    async def submit_job(payload: bytes) -> None:
        try:
            await pipeline.SubmitVideoJob(pipeline_pb.SubmitVideoJobRequest.FromString(payload))
        except NotFound:  # the video was deleted before its job could be submitted: nothing to do
            log.info("job submission dropped: its video is gone")

    relay = OutboxRelay(pool, {SUBMIT_JOB_TOPIC: submit_job}, name="ingest")
    relay.start()
    ingestor = VideoIngestor(
        videos, UploadStore(pool), blobs, relay, settings.blob_dir.parent / "staging",
        max_upload_bytes=settings.max_upload_bytes, max_chunk_bytes=settings.upload_chunk_bytes,
        min_free_disk_bytes=settings.min_free_disk_bytes,
    )
    media = await start_media_server(blobs, settings.grpc_host, settings.media_port)
    servicer = IngestServicer(ingestor, videos, blobs)
    sweeper = asyncio.create_task(_sweep_staging_forever(ingestor))

    async def stop_sweeper() -> None:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)

    await run_server(
        name="ingest", host=settings.grpc_host, port=settings.grpc_port,
        register=lambda server: register(server, servicer),
        on_stop=[stop_sweeper, media.cleanup, relay.stop, channels.close, pool.close],
        grace_s=settings.shutdown_grace_s, internal_token=settings.internal_token.get_secret_value(),
    )


async def _sweep_staging_forever(ingestor: VideoIngestor, interval_s: float = STAGING_SWEEP_S) -> None:
    """Expired uploads and leftover staged files, at start and every ``interval_s``."""
    while True:
        try:
            deleted = await ingestor.sweep_staging()
            if deleted:
                log.info("staging sweep deleted %d file(s)", deleted)
        except Exception:  # the database may be briefly away: try again next round
            log.warning("staging sweep failed", exc_info=True)
        await asyncio.sleep(interval_s)


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
