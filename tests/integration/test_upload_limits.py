"""Bounded input at ingest, against real PostgreSQL and Redis: a hostile sidecar is refused fast and leaves
the upload to be completed again, uploads past the size limit or the disk's free space are refused as they
happen, and nothing is stored for any of them."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.blobstore import LocalBlobStore
from services.common.config import IngestSettings
from services.common.db import Database
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.outbox import OutboxRelay
from services.common.principal import Principal
from services.ingest.ingestor import VideoIngestor
from services.ingest.inputs import MAX_SUBTITLE_BYTES, MAX_TITLE_CHARS, SidecarInput, VideoMeta
from services.ingest.store import UploadStore, VideoStore
from services.media.subtitles import Cue
from tests.db_setup import service_db
from tests.media import SceneSpec, make_scene_video, srt_text

pytestmark = pytest.mark.integration

# The uploader: a user, who owns what they upload.
UPLOADER = Principal(uuid.uuid4(), "user")

DEFAULT_CAP = IngestSettings.model_fields["max_upload_bytes"].default
HOSTILE_SRT = (b"1\n00:00:01,000 --> 00:00:02,000\n" + b"<a" * MAX_SUBTITLE_BYTES)[:MAX_SUBTITLE_BYTES]
GOOD_SRT = srt_text([Cue(0.2, 1.5, "a good sidecar")]).encode()


class Harness:
    def __init__(self, pool: Database, tmp_path: Path) -> None:
        self.pool = pool
        self.staging, self.blobs = tmp_path / "staging", tmp_path / "blobs"
        self.staging.mkdir()

    def ingestor(self, *, max_upload_bytes: int = DEFAULT_CAP, min_free_disk_bytes: int = 0) -> VideoIngestor:
        return VideoIngestor(
            VideoStore(self.pool), UploadStore(self.pool), LocalBlobStore(self.blobs, "http://media.invalid"),
            OutboxRelay(self.pool, {}, name="test"), self.staging, max_upload_bytes=max_upload_bytes,
            max_chunk_bytes=10_000_000, submit_wait_s=0,
            min_free_disk_bytes=min_free_disk_bytes,
        )

    async def stored(self) -> tuple[int, int, list[str], list[str]]:
        """(uploads rows, videos rows, blob files, staged files): what a refused request must not change."""
        blob_files = sorted(str(p) for p in self.blobs.rglob("*") if p.is_file()) if self.blobs.exists() else []
        return (
            int(await self.pool.fetchval("SELECT count(*) FROM uploads")),
            int(await self.pool.fetchval("SELECT count(*) FROM videos")),
            blob_files,
            sorted(p.name for p in self.staging.iterdir()),
        )


@pytest.fixture
async def harness(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Harness]:
    pool = await service_db(pg_dsn, "ingest")
    yield Harness(pool, tmp_path)
    await pool.close()


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("limits") / "clip.mp4"
    return make_scene_video(path, (SceneSpec(2.0, "testsrc2"),), audio=False).read_bytes()


def test_the_default_upload_limit_is_10_gb() -> None:
    assert DEFAULT_CAP == 10_000_000_000
    assert IngestSettings.model_fields["min_free_disk_bytes"].default == 1024**3


# -- sidecar subtitles -------------------------------------------------------------------------------------


async def test_a_hostile_sidecar_is_refused_fast_and_the_upload_can_be_completed_again(
    harness: Harness, video_bytes: bytes
) -> None:
    ingestor = harness.ingestor()
    upload = await ingestor.create_upload(UPLOADER, "clip.mp4", "video/mp4", len(video_bytes))
    await ingestor.write_upload(UPLOADER, upload.id, 0, video_bytes)
    before = await harness.stored()

    started = time.perf_counter()
    with pytest.raises(InvalidArgument) as refused:
        await ingestor.complete_upload(UPLOADER, upload.id, "t", "", SidecarInput(HOSTILE_SRT, "SRT", "evil.srt"))
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"hostile sidecar took {elapsed:.2f} s"
    assert refused.value.reason == "INVALID_SUBTITLES"
    assert [v.field for v in refused.value.field_violations] == ["sidecar_subtitles"]

    again = await ingestor.get_upload(UPLOADER, upload.id)
    assert (again.state, again.committed_size) == ("ACTIVE", len(video_bytes))
    assert (harness.staging / f"upload-{upload.id}").read_bytes() == video_bytes
    assert await harness.stored() == before

    video = await ingestor.complete_upload(UPLOADER, upload.id, "t", "", SidecarInput(GOOD_SRT, "SRT", "good.srt"))
    assert video.sidecar_format == "SRT" and video.size_bytes == len(video_bytes)
    assert (harness.blobs / video.blob_key).read_bytes() == video_bytes
    assert (harness.blobs / str(video.sidecar_key)).read_bytes() == GOOD_SRT
    assert (await ingestor.get_upload(UPLOADER, upload.id)).state == "COMPLETED"


async def test_a_bad_video_still_cancels_the_upload(harness: Harness) -> None:
    ingestor = harness.ingestor()
    upload = await ingestor.create_upload(UPLOADER, "notes.mp4", "video/mp4", 0)
    await ingestor.write_upload(UPLOADER, upload.id, 0, b"not a video at all\n" * 100)
    with pytest.raises(InvalidArgument) as refused:
        await ingestor.complete_upload(UPLOADER, upload.id, "t", "", SidecarInput(GOOD_SRT, "SRT"))
    assert refused.value.field_violations[0].field == "video"
    assert (await ingestor.get_upload(UPLOADER, upload.id)).state == "CANCELLED"


# -- request fields ----------------------------------------------------------------------------------------


async def test_field_limits_name_the_field_and_keep_the_upload(harness: Harness, video_bytes: bytes) -> None:
    ingestor = harness.ingestor()
    upload = await ingestor.create_upload(UPLOADER, "../../home/me/clip.mp4", "video/mp4", len(video_bytes))
    assert upload.filename == "clip.mp4"  # the base name only
    for filename, content_type, field in [("a" * 256, "video/mp4", "upload.filename"),
                                          ("x\x00.mp4", "video/mp4", "upload.filename"),
                                          ("ok.mp4", "v" * 256, "upload.content_type")]:
        with pytest.raises(InvalidArgument) as refused:
            await ingestor.create_upload(UPLOADER, filename, content_type, 10)
        assert refused.value.field_violations[0].field == field
    await ingestor.write_upload(UPLOADER, upload.id, 0, video_bytes)
    with pytest.raises(InvalidArgument) as refused:
        await ingestor.complete_upload(UPLOADER, upload.id, "t" * (MAX_TITLE_CHARS + 1), "", None)
    assert refused.value.field_violations[0].field == "title"
    assert (await ingestor.get_upload(UPLOADER, upload.id)).state == "ACTIVE"
    video = await ingestor.complete_upload(UPLOADER, upload.id, "t" * MAX_TITLE_CHARS, "d\n" * 100, None)
    assert video.filename == "clip.mp4" and len(video.title) == MAX_TITLE_CHARS

    with pytest.raises(InvalidArgument) as refused:
        await ingestor.update_video(UPLOADER, video.id, description="d" * 10_001)
    assert refused.value.field_violations[0].field == "video.description"
    assert (await ingestor.update_video(UPLOADER, video.id, title="renamed")).title == "renamed"


# -- the upload limit (10 GB) -------------------------------------------------------------------------------


async def test_ten_gb_and_one_byte_is_refused_over_resumable_uploads(harness: Harness) -> None:
    ingestor = harness.ingestor()  # the real default limit, 10 GB
    if shutil.disk_usage(harness.staging).free < DEFAULT_CAP:
        pytest.skip("declaring a 10 GB upload needs 10 GB free on the staging disk")
    before = await harness.stored()
    with pytest.raises(InvalidArgument) as refused:
        await ingestor.create_upload(UPLOADER, "huge.mp4", "video/mp4", DEFAULT_CAP + 1)
    assert (refused.value.reason, refused.value.field_violations[0].field) == ("UPLOAD_TOO_LARGE",
                                                                               "upload.size_bytes")
    assert await harness.stored() == before  # no row, no staged file

    upload = await ingestor.create_upload(UPLOADER, "huge.mp4", "video/mp4", DEFAULT_CAP)
    staged = harness.staging / f"upload-{upload.id}"
    os.truncate(staged, DEFAULT_CAP)  # sparse: 10 GB committed without writing them
    await harness.pool.execute("UPDATE uploads SET committed_size = $2 WHERE id = $1", upload.id, DEFAULT_CAP)
    before = await harness.stored()
    for offset, data in [(DEFAULT_CAP, b"\0"), (DEFAULT_CAP - 1, b"\0\0")]:
        with pytest.raises(InvalidArgument) as refused:
            await ingestor.write_upload(UPLOADER, upload.id, offset, data)
        assert (refused.value.reason, refused.value.field_violations[0].field) == ("UPLOAD_TOO_LARGE", "data")
    assert staged.stat().st_size == DEFAULT_CAP and staged.stat().st_blocks < 1024  # nothing written
    assert (await ingestor.get_upload(UPLOADER, upload.id)).committed_size == DEFAULT_CAP
    assert await harness.stored() == before  # no video row, no blob
    staged.unlink()


async def _zeros(chunk: bytes, total: int, pulled: list[int]) -> AsyncIterator[bytes]:
    """``total`` bytes of ``chunk`` (one shared buffer), counting what the consumer pulls."""
    sent = 0
    while sent < total:
        piece = chunk[: total - sent]
        pulled.append(len(piece))
        sent += len(piece)
        yield piece


async def test_a_stream_past_the_limit_is_refused_as_it_passes(harness: Harness) -> None:
    """The stream path at a lower limit: 10 GB of staging writes take ~40 s here and fill a shared disk, and
    skipping zeros (sparse staging) would only serve this test. The 10 GB default is checked above."""
    cap = 64 * 1024 * 1024
    ingestor = harness.ingestor(max_upload_bytes=cap)
    before = await harness.stored()
    chunk = bytes(4 * 1024 * 1024)
    pulled: list[int] = []
    with pytest.raises(InvalidArgument) as refused:
        await ingestor.ingest_stream(UPLOADER, VideoMeta("big.mp4"), _zeros(chunk, 2 * cap, pulled))
    assert (refused.value.reason, refused.value.field_violations[0].field) == ("UPLOAD_TOO_LARGE", "chunk")
    assert sum(pulled) == cap + len(chunk)  # refused at the chunk that passed the limit, not at the end
    assert await harness.stored() == before  # the staged stream is gone, no blob, no row

    pulled.clear()
    with pytest.raises(InvalidArgument) as refused:
        await ingestor.ingest_stream(UPLOADER, VideoMeta("big.mp4", size_bytes=cap + 1), _zeros(chunk, cap + 1, pulled))
    assert (refused.value.reason, refused.value.field_violations[0].field) == ("UPLOAD_TOO_LARGE",
                                                                               "metadata.size_bytes")
    assert pulled == []  # refused on the metadata, before a chunk was read
    with pytest.raises(InvalidArgument) as refused:
        await harness.ingestor().ingest_stream(UPLOADER, VideoMeta("big.mp4", size_bytes=DEFAULT_CAP + 1),
                                               _zeros(chunk, 1, pulled))
    assert refused.value.reason == "UPLOAD_TOO_LARGE" and pulled == []
    with pytest.raises(InvalidArgument) as refused:  # more than the metadata declared
        await ingestor.ingest_stream(UPLOADER, VideoMeta("big.mp4", size_bytes=len(chunk)),
                                     _zeros(chunk, 2 * len(chunk), pulled))
    assert refused.value.reason == "UPLOAD_SIZE_MISMATCH"
    assert await harness.stored() == before


async def test_a_stream_with_a_hostile_sidecar_is_refused_before_its_bytes(harness: Harness) -> None:
    before = await harness.stored()
    pulled: list[int] = []
    started = time.perf_counter()
    with pytest.raises(InvalidArgument) as refused:
        await harness.ingestor().ingest_stream(
            UPLOADER, VideoMeta("clip.mp4", sidecar=SidecarInput(HOSTILE_SRT, "SRT")),
            _zeros(b"\0" * 1024, 4096, pulled),
        )
    assert time.perf_counter() - started < 2.0
    assert refused.value.reason == "INVALID_SUBTITLES" and pulled == []
    assert await harness.stored() == before


# -- free disk space ---------------------------------------------------------------------------------------


async def test_uploads_are_refused_when_the_disk_would_fill(harness: Harness, video_bytes: bytes) -> None:
    ok = harness.ingestor()
    upload = await ok.create_upload(UPLOADER, "clip.mp4", "video/mp4", len(video_bytes))
    before = await harness.stored()
    free = shutil.disk_usage(harness.staging).free
    full = harness.ingestor(min_free_disk_bytes=free + 1024**3)  # the threshold is above what is free

    with pytest.raises(ResourceExhausted) as refused:
        await full.create_upload(UPLOADER, "clip.mp4", "video/mp4", len(video_bytes))
    assert refused.value.reason == "INSUFFICIENT_STORAGE"
    with pytest.raises(ResourceExhausted):
        await full.write_upload(UPLOADER, upload.id, 0, video_bytes)
    with pytest.raises(ResourceExhausted):
        await full.ingest_stream(UPLOADER, VideoMeta("clip.mp4"), _zeros(video_bytes, len(video_bytes), []))
    assert (await ok.get_upload(UPLOADER, upload.id)).committed_size == 0
    assert (harness.staging / f"upload-{upload.id}").stat().st_size == 0
    assert await harness.stored() == before

    # Room for the metadata check but not for the first chunk: refused at the chunk (a margin of 512 MiB
    # against other writers on this disk), and its staged stream is removed.
    chunk = bytes(1024 * 1024 * 1024)
    tight = harness.ingestor(min_free_disk_bytes=shutil.disk_usage(harness.staging).free - 512 * 1024**2)
    pulled: list[int] = []
    with pytest.raises(ResourceExhausted):
        await tight.ingest_stream(UPLOADER, VideoMeta("clip.mp4"), _zeros(chunk, len(chunk), pulled))
    assert pulled == [len(chunk)]
    assert await harness.stored() == before
