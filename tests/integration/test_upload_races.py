"""Resumable uploads under concurrency, against real PostgreSQL: one upload becomes at most one video, a
write cannot change bytes a completion is storing, and bytes of a write that never committed are dropped."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import pytest

from services.common.blobstore import LocalBlobStore
from services.common.errors import Aborted, ClipMindError, FailedPrecondition
from services.common.outbox import OutboxRelay
from services.common.principal import Principal
from services.ingest.ingestor import VideoIngestor
from services.ingest.store import UploadStore, VideoStore
from tests.db_setup import service_db
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.integration

# The uploader: a user, who owns what they upload.
UPLOADER = Principal(uuid.uuid4(), "user")


@pytest.fixture
async def setup(pg_dsn: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    pool = await service_db(pg_dsn, "ingest")
    blobs = tmp_path / "blobs"
    ingestor = VideoIngestor(
        VideoStore(pool), UploadStore(pool), LocalBlobStore(blobs, "http://media.invalid"),
        OutboxRelay(pool, {}, name="test"), tmp_path / "staging", max_upload_bytes=50_000_000,
        max_chunk_bytes=10_000_000, submit_wait_s=0,
    )
    video = make_scene_video(tmp_path / "clip.mp4", (SceneSpec(2.0, "testsrc2"),), audio=False)
    yield pool, ingestor, blobs, video.read_bytes()
    await pool.close()


async def _videos_of(pool, upload_id: uuid.UUID) -> int:  # type: ignore[no-untyped-def]
    return int(await pool.fetchval(
        "SELECT count(*) FROM videos v JOIN uploads u ON u.video_id = v.id WHERE u.id = $1", upload_id))


async def test_concurrent_completions_make_one_video(setup) -> None:  # type: ignore[no-untyped-def]
    pool, ingestor, blobs, data = setup
    upload = await ingestor.create_upload(UPLOADER, "clip.mp4", "video/mp4", len(data))
    await ingestor.write_upload(UPLOADER, upload.id, 0, data)

    results = await asyncio.gather(
        *(ingestor.complete_upload(UPLOADER, upload.id, f"take {i}", "", None) for i in range(3)),
        return_exceptions=True,
    )
    videos = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(videos) == 1, results
    assert all(isinstance(e, Aborted | FailedPrecondition) for e in errors), errors
    assert {e.reason for e in errors} <= {"UPLOAD_BUSY", "UPLOAD_NOT_ACTIVE"}  # type: ignore[union-attr]
    assert (await ingestor.get_upload(UPLOADER, upload.id)).state == "COMPLETED"
    assert await _videos_of(pool, upload.id) == 1
    assert [p.parent.name for p in blobs.glob("videos/*/source*")] == [str(videos[0].id)]  # no orphan blobs
    with pytest.raises(FailedPrecondition) as again:
        await ingestor.complete_upload(UPLOADER, upload.id, "late", "", None)
    assert again.value.reason == "UPLOAD_NOT_ACTIVE"


async def test_a_write_during_completion_is_refused_and_changes_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    pool, ingestor, blobs, data = setup
    upload = await ingestor.create_upload(UPLOADER, "clip.mp4", "video/mp4", 0)  # size not declared: appends allowed
    await ingestor.write_upload(UPLOADER, upload.id, 0, data)

    completion = asyncio.create_task(ingestor.complete_upload(UPLOADER, upload.id, "t", "", None))
    while not await pool.fetchval(  # wait until the completion holds the upload's lock (validation takes a while)
        "SELECT count(*) FROM uploads WHERE id = $1 AND lock_token IS NOT NULL", upload.id
    ):
        assert not completion.done(), "the completion ended before it was seen holding the lock"
        await asyncio.sleep(0.005)
    outcomes = []
    while not completion.done():
        try:
            await ingestor.write_upload(UPLOADER, upload.id, len(data), b"appended while completing")
            outcomes.append("written")
        except ClipMindError as exc:
            outcomes.append(exc.reason)
        await asyncio.sleep(0.01)
    video = await completion
    assert "written" not in outcomes and "UPLOAD_BUSY" in outcomes, outcomes
    stored = (blobs / video.blob_key).read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert video.size_bytes == len(data)


async def test_bytes_of_an_uncommitted_write_are_dropped(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, ingestor, blobs, data = setup
    upload = await ingestor.create_upload(UPLOADER, "clip.mp4", "video/mp4", len(data))
    await ingestor.write_upload(UPLOADER, upload.id, 0, data)
    with (tmp_path / "staging" / f"upload-{upload.id}").open("ab") as staged:  # a write whose process died
        staged.write(b"\0" * 4096)                                           # before it committed

    video = await ingestor.complete_upload(UPLOADER, upload.id, "t", "", None)
    assert (blobs / video.blob_key).read_bytes() == data


async def test_a_lock_whose_holder_died_expires(setup) -> None:  # type: ignore[no-untyped-def]
    """The upload lock is a lease: a process that died holding it blocks the upload only until it expires."""
    pool, ingestor, _, data = setup
    upload = await ingestor.create_upload(UPLOADER, "clip.mp4", "video/mp4", len(data))
    await pool.execute(  # a holder that died a moment ago, its lease still running
        "UPDATE uploads SET lock_token = gen_random_uuid(), lock_expire_time = now() + interval '1 hour' WHERE id = $1",
        upload.id,
    )
    with pytest.raises(Aborted) as busy:
        await ingestor.write_upload(UPLOADER, upload.id, 0, data)
    assert busy.value.reason == "UPLOAD_BUSY" and busy.value.retry_delay_s
    await pool.execute("UPDATE uploads SET lock_expire_time = now() - interval '1 second' WHERE id = $1", upload.id)
    assert await ingestor.write_upload(UPLOADER, upload.id, 0, data) == len(data)
    assert (await ingestor.complete_upload(UPLOADER, upload.id, "t", "", None)).size_bytes == len(data)
