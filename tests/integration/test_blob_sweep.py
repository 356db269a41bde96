"""Orphan blobs (issue 13's housekeeping), against real PostgreSQL and a local blob store: the blobs of a video
(or compilation) whose row is gone are removed once untouched for the grace period; a blob a row points to never
is, nor one being written by an upload completing while the sweep runs; a row whose source blob is gone is
reported."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from services.common.blob_sweep import sweep_orphans
from services.common.blobstore import LocalBlobStore
from services.common.outbox import OutboxRelay
from services.common.principal import Principal
from services.ingest.ingestor import VideoIngestor
from services.ingest.store import UploadStore, VideoStore
from services.pipeline.compilation_store import CompilationStore
from tests.db_setup import service_db
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.integration

UPLOADER = Principal(uuid.uuid4(), "user")
GRACE_S = 3600.0


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` (a blob directory) look last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_orphans_go_stored_videos_stay_even_mid_upload_and_missing_sources_are_reported(
        pg_dsn: str, tmp_path: Path) -> None:
    pool = await service_db(pg_dsn, "ingest")
    root = tmp_path / "blobs"
    blobs = LocalBlobStore(root, "http://media.invalid")
    ingestor = VideoIngestor(
        VideoStore(pool), UploadStore(pool), blobs, OutboxRelay(pool, {}, name="test"), tmp_path / "staging",
        max_upload_bytes=50_000_000, max_chunk_bytes=10_000_000, submit_wait_s=0)
    data = make_scene_video(tmp_path / "clip.mp4", (SceneSpec(2.0, "testsrc2"),), audio=False).read_bytes()
    try:
        async def upload() -> uuid.UUID:
            made = await ingestor.create_upload(UPLOADER, "clip.mp4", "video/mp4", len(data))
            await ingestor.write_upload(UPLOADER, made.id, 0, data)
            return (await ingestor.complete_upload(UPLOADER, made.id, "kept", "", None)).id

        stored = await upload()
        _age(root / "videos" / str(stored), 2 * GRACE_S)  # old, but a row points to it: kept
        old_orphan, fresh_orphan = uuid.uuid4(), uuid.uuid4()
        for orphan in (old_orphan, fresh_orphan):
            await blobs.put_bytes(f"videos/{orphan}/source.mp4", b"left behind")
        _age(root / "videos" / str(old_orphan), 2 * GRACE_S)

        # An upload completes while sweeps run back to back: its blobs, written before its row commits, stay.
        completing = asyncio.create_task(upload())
        removed: list[uuid.UUID] = []
        while not completing.done():
            removed += (await ingestor.sweep_blobs(grace_s=GRACE_S))[0]
        during = await completing

        more, missing = await ingestor.sweep_blobs(grace_s=GRACE_S)
        assert removed + more == [old_orphan] and not (root / "videos" / str(old_orphan)).exists()
        for kept in (stored, during, fresh_orphan):
            assert (root / "videos" / str(kept)).is_dir(), kept
        assert {stored, during}.isdisjoint(missing)

        lost = await ingestor.get_video(UPLOADER, stored)
        blobs.local_path(lost.blob_key).unlink()  # its source vanished from the store
        _, missing = await ingestor.sweep_blobs(grace_s=GRACE_S)
        assert stored in missing and during not in missing
    finally:
        await pool.close()


async def test_compilation_files_without_a_row_go(pg_dsn: str, tmp_path: Path) -> None:
    pool = await service_db(pg_dsn, "pipeline")
    blobs = LocalBlobStore(tmp_path / "blobs", "http://media.invalid")
    try:
        orphan = uuid.uuid4()
        await blobs.put_bytes(f"compilations/{orphan}/output.mp4", b"an unfinished render")
        await blobs.put_bytes("compilations/not-an-id/output.mp4", b"not ours")
        store = CompilationStore(pool)
        assert await sweep_orphans(blobs, "compilations", store.existing, grace_s=GRACE_S) == []  # too fresh
        _age(tmp_path / "blobs" / "compilations" / str(orphan), 2 * GRACE_S)
        _age(tmp_path / "blobs" / "compilations" / "not-an-id", 2 * GRACE_S)
        assert await sweep_orphans(blobs, "compilations", store.existing, grace_s=GRACE_S) == [orphan]
        assert (tmp_path / "blobs" / "compilations" / "not-an-id").is_dir()  # names it does not know: left alone
    finally:
        await pool.close()
