"""The ingest staging directory does not grow without bound: against real PostgreSQL."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from services.common.blobstore import LocalBlobStore
from services.common.errors import FailedPrecondition
from services.common.outbox import OutboxRelay
from services.common.principal import Principal
from services.ingest.ingestor import VideoIngestor
from services.ingest.store import UploadStore, VideoStore
from tests.db_setup import service_db

pytestmark = pytest.mark.integration

# The uploader: a user, who owns what they upload.
UPLOADER = Principal(uuid.uuid4(), "user")


def _make_old(path: Path, hours: float = 2.0) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


async def test_sweep_cancels_expired_uploads_and_deletes_leftovers(  # type: ignore[no-untyped-def]
    pg_dsn: str, tmp_path: Path
) -> None:
    pool = await service_db(pg_dsn, "ingest")
    staging = tmp_path / "staging"
    ingestor = VideoIngestor(
        VideoStore(pool), UploadStore(pool), LocalBlobStore(tmp_path / "blobs", "http://media.invalid"),
        OutboxRelay(pool, {}, name="test"), staging, submit_wait_s=0, max_upload_bytes=1_000_000,
        max_chunk_bytes=1_000_000,
    )
    try:
        expired = await ingestor.create_upload(UPLOADER, "a.mp4", "video/mp4", 0)
        await ingestor.write_upload(UPLOADER, expired.id, 0, b"half a video")
        await pool.execute("UPDATE uploads SET expire_time = now() - interval '1 minute' WHERE id = $1", expired.id)
        idle = await ingestor.create_upload(UPLOADER, "b.mp4", "video/mp4", 0)  # active, paused for hours: kept
        await ingestor.write_upload(UPLOADER, idle.id, 0, b"resumes tomorrow")
        _make_old(staging / f"upload-{idle.id}")
        orphan = staging / f"upload-{uuid.uuid4()}"  # a process died before the row was written
        orphan.write_bytes(b"x")
        _make_old(orphan)
        dead_stream = staging / f"stream-{uuid.uuid4()}"
        dead_stream.write_bytes(b"y")
        _make_old(dead_stream)
        live_stream = staging / f"stream-{uuid.uuid4()}"  # being written right now
        live_stream.write_bytes(b"z")
        fresh_orphan = staging / f"upload-{uuid.uuid4()}"  # just staged, its row not yet committed
        fresh_orphan.write_bytes(b"")

        assert await ingestor.sweep_staging() == 3
        assert sorted(p.name for p in staging.iterdir()) == sorted(
            [f"upload-{idle.id}", live_stream.name, fresh_orphan.name]
        )
        assert (await ingestor.get_upload(UPLOADER, expired.id)).state == "CANCELLED"
        assert (await ingestor.get_upload(UPLOADER, idle.id)).state == "ACTIVE"
        with pytest.raises(FailedPrecondition):
            await ingestor.write_upload(UPLOADER, expired.id, 12, b"too late")
        assert await ingestor.sweep_staging() == 0
    finally:
        await pool.close()
