"""Ownership at ingest, against real PostgreSQL: every upload and video is its uploader's; another user's is
NOT_FOUND exactly as a missing one is (code, reason, message and metadata alike, so existence does not leak),
lists and counts hold only the caller's, page tokens continue only their own list, administrators see and
change everyone's, and rows from before ownership are theirs alone.

The public servicer is called in-process with each caller bound, as the authentication interceptor binds
them. The database is shared by the test session: each test makes its own users (fresh uuids), so a user's
list holds only what the test made; an administrator's holds other tests' videos too."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as pb
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2 as pipeline_pb
from google.api import httpbody_pb2
from google.protobuf import field_mask_pb2

from services.common.blobstore import LocalBlobStore
from services.common.db import Database, create_pool, migrate, search_path
from services.common.errors import ClipMindError, InvalidArgument, NotFound
from services.common.outbox import OutboxRelay
from services.common.principal import Principal
from services.ingest.ingestor import VideoIngestor
from services.ingest.records import UNOWNED, Video
from services.ingest.servicer import IngestServicer
from services.ingest.store import MIGRATIONS, SCHEMA, SUBMIT_JOB_TOPIC, UploadStore, VideoStore
from tests.db_setup import ServicerStub, fresh_database, service_db
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.integration


def _user() -> Principal:
    return Principal(uuid.uuid4(), "user")


ADMIN = Principal(uuid.uuid4(), "admin")


@dataclass
class Ingest:
    pool: Database
    videos: VideoStore
    servicer: IngestServicer

    def as_(self, caller: Principal) -> Any:
        """The public IngestService as ``caller`` calls it."""
        return ServicerStub(self.servicer, caller)

    async def video_of(self, owner: Principal, title: str = "mine", state: str = "PENDING") -> Video:
        """A stored video of ``owner`` (no bytes: the tests here are about its record)."""
        video_id = uuid.uuid4()
        await self.videos.create(Video(video_id, f"videos/{video_id}/source.mp4", state, owner_id=owner.user_id,
                                       title=title))
        return await self.videos.get(video_id)


def _ingest(pool: Database, tmp_path: Path) -> Ingest:
    videos, blobs = VideoStore(pool), LocalBlobStore(tmp_path / "blobs", "http://media.invalid")
    ingestor = VideoIngestor(
        videos, UploadStore(pool), blobs, OutboxRelay(pool, {}, name="test-ownership"), tmp_path / "staging",
        max_upload_bytes=50_000_000, max_chunk_bytes=10_000_000, submit_wait_s=0,
    )
    return Ingest(pool, videos, IngestServicer(ingestor, blobs))


@pytest.fixture
async def ingest(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Ingest]:
    pool = await service_db(pg_dsn, "ingest")
    yield _ingest(pool, tmp_path)
    await pool.close()


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ownership") / "clip.mp4"
    return make_scene_video(path, (SceneSpec(1.0, "testsrc2"),), audio=False).read_bytes()


async def _refusal(call: Awaitable[Any]) -> NotFound:
    with pytest.raises(NotFound) as refused:
        await call
    return refused.value


def _shape(error: ClipMindError, object_id: uuid.UUID) -> tuple[Any, ...]:
    """An error with the object's id taken out: what a caller could compare between two objects."""
    def blank(text: str) -> str:
        return text.replace(str(object_id), "<id>")
    return (error.code, error.reason, blank(error.message), {k: blank(v) for k, v in error.metadata.items()},
            error.field_violations, error.retry_delay_s)


async def _same_as_missing(call: Callable[[uuid.UUID], Awaitable[Any]], theirs: uuid.UUID) -> None:
    """``call`` on another user's object fails exactly as on an object that does not exist."""
    missing = uuid.uuid4()
    foreign, absent = await _refusal(call(theirs)), await _refusal(call(missing))
    assert _shape(foreign, theirs) == _shape(absent, missing)


def _upload_name(upload_id: uuid.UUID) -> str:
    return f"uploads/{upload_id}"


# -- another user's objects ---------------------------------------------------------------------------------


async def test_another_users_upload_is_not_found_like_a_missing_one(ingest: Ingest, video_bytes: bytes) -> None:
    alice, bob = _user(), _user()
    upload = await ingest.as_(alice).CreateUpload(pb.CreateUploadRequest(upload=pb.Upload(
        filename="clip.mp4", content_type="video/mp4", size_bytes=len(video_bytes))))
    upload_id = uuid.UUID(upload.name.removeprefix("uploads/"))
    half = len(video_bytes) // 2
    await ingest.as_(alice).WriteUpload(pb.WriteUploadRequest(
        name=upload.name, offset=0, data=httpbody_pb2.HttpBody(data=video_bytes[:half])))
    as_bob = ingest.as_(bob)

    await _same_as_missing(lambda u: as_bob.GetUpload(pb.GetUploadRequest(name=_upload_name(u))), upload_id)
    await _same_as_missing(lambda u: as_bob.WriteUpload(pb.WriteUploadRequest(
        name=_upload_name(u), offset=half, data=httpbody_pb2.HttpBody(data=video_bytes[half:]))), upload_id)
    await _same_as_missing(lambda u: as_bob.CompleteUpload(pb.CompleteUploadRequest(
        name=_upload_name(u), title="taken over")), upload_id)
    gone = await _refusal(as_bob.GetUpload(pb.GetUploadRequest(name=upload.name)))
    assert gone.reason == "UPLOAD_NOT_FOUND" and gone.metadata == {"name": upload.name}

    # Bob neither wrote, nor held the upload's lock, nor completed it: Alice carries on where she was.
    row = await ingest.pool.fetchrow("SELECT committed_size, state, lock_token FROM uploads WHERE id = $1", upload_id)
    assert row is not None and (row["committed_size"], row["state"], row["lock_token"]) == (half, "ACTIVE", None)
    written = await ingest.as_(alice).WriteUpload(pb.WriteUploadRequest(
        name=upload.name, offset=half, data=httpbody_pb2.HttpBody(data=video_bytes[half:])))
    assert written.committed_size == len(video_bytes)
    video = await ingest.as_(alice).CompleteUpload(pb.CompleteUploadRequest(name=upload.name, title="mine"))
    assert video.owner == f"users/{alice.user_id}"


async def test_another_users_video_is_not_found_like_a_missing_one(ingest: Ingest) -> None:
    alice, bob = _user(), _user()
    video = await ingest.video_of(alice, "alice's")
    as_bob = ingest.as_(bob)

    await _same_as_missing(lambda v: as_bob.GetVideo(pb.GetVideoRequest(name=f"videos/{v}")), video.id)
    await _same_as_missing(lambda v: as_bob.UpdateVideo(pb.UpdateVideoRequest(
        video=pb.Video(name=f"videos/{v}", title="taken over"),
        update_mask=field_mask_pb2.FieldMask(paths=["title"]))), video.id)
    await _same_as_missing(lambda v: as_bob.UpdateVideo(pb.UpdateVideoRequest(  # an empty change reads it
        video=pb.Video(name=f"videos/{v}"), update_mask=field_mask_pb2.FieldMask())), video.id)
    await _same_as_missing(lambda v: as_bob.DeleteVideo(pb.DeleteVideoRequest(name=f"videos/{v}")), video.id)
    gone = await _refusal(as_bob.GetVideo(pb.GetVideoRequest(name=f"videos/{video.id}")))
    assert gone.reason == "VIDEO_NOT_FOUND" and gone.metadata == {"name": f"videos/{video.id}"}

    assert await ingest.videos.get(video.id) == video  # not renamed, not deleted, not even touched
    deletions = await ingest.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE topic LIKE '%delete%' AND position($1::bytea IN payload) > 0",
        str(video.id).encode())
    assert deletions == 0
    mine = await ingest.as_(alice).GetVideo(pb.GetVideoRequest(name=f"videos/{video.id}"))
    assert (mine.title, mine.owner) == ("alice's", f"users/{alice.user_id}")


# -- lists, counts and page tokens ----------------------------------------------------------------------------


async def _list(stub: Any, page_size: int, **fields: Any) -> tuple[list[pb.Video], list[int]]:
    """Every page of a caller's ListVideos: the videos, and the total_size each page reported."""
    videos: list[pb.Video] = []
    totals: list[int] = []
    token = ""
    while True:
        page = await stub.ListVideos(pb.ListVideosRequest(page_size=page_size, page_token=token, **fields))
        videos += page.videos
        totals.append(page.total_size)
        token = page.next_page_token
        if not token:
            return videos, totals


async def test_lists_and_counts_hold_only_the_callers_videos(ingest: Ingest) -> None:
    alice, bob = _user(), _user()
    alices = [await ingest.video_of(alice, f"a{i}") for i in range(3)]
    ready = await ingest.video_of(alice, "a ready one", state="READY")
    bobs = await ingest.video_of(bob, "b0")

    listed, totals = await _list(ingest.as_(alice), 2)
    assert [v.name for v in listed] == [f"videos/{v.id}" for v in reversed([*alices, ready])]  # newest first
    assert {v.owner for v in listed} == {f"users/{alice.user_id}"} and totals == [4, 4]
    pending, totals = await _list(ingest.as_(alice), 2, filter="state = PENDING")
    assert [v.name for v in pending] == [f"videos/{v.id}" for v in reversed(alices)] and totals == [3, 3]

    listed, totals = await _list(ingest.as_(bob), 2)
    assert [v.name for v in listed] == [f"videos/{bobs.id}"] and totals == [1]
    listed, totals = await _list(ingest.as_(bob), 2, filter="state = READY")
    assert listed == [] and totals == [0]

    everyone, totals = await _list(ingest.as_(ADMIN), 1000)
    names = {v.name for v in everyone}
    assert {f"videos/{v.id}" for v in [*alices, ready, bobs]} <= names
    assert totals[0] == len(everyone) and totals[0] >= 5


async def test_a_users_page_is_read_by_owner_from_the_owner_index(ingest: Ingest) -> None:
    """The owner is a condition of the query: a page's LIMIT counts only the user's rows (newer videos of
    others do not shorten it), and the index of migration 0003 serves it newest first."""
    alice = _user()
    mine = [await ingest.video_of(alice, f"a{i}") for i in range(3)]
    for _ in range(3):
        await ingest.video_of(_user(), "someone else's")  # newer than Alice's
    page = await ingest.videos.list_page(owner=alice.user_id, limit=2, after=None)
    assert [v.id for v in page] == [mine[2].id, mine[1].id]
    async with ingest.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT * FROM videos WHERE owner_id = $1 ORDER BY create_time DESC, id DESC LIMIT 3",
            alice.user_id))
    assert "videos_owner_create_time_idx" in plan, plan


async def test_a_page_token_continues_only_its_own_list(ingest: Ingest) -> None:
    alice, bob = _user(), _user()
    for i in range(3):
        await ingest.video_of(alice, f"a{i}")
    first = await ingest.as_(alice).ListVideos(pb.ListVideosRequest(page_size=1, filter="state = PENDING"))
    token = first.next_page_token
    assert token

    for caller, fields in ((bob, {"filter": "state = PENDING"}), (ADMIN, {"filter": "state = PENDING"}),
                           (alice, {}), (alice, {"filter": "state = READY"}),
                           (alice, {"filter": "state = PENDING", "order_by": "create_time desc"})):
        with pytest.raises(InvalidArgument) as refused:
            await ingest.as_(caller).ListVideos(pb.ListVideosRequest(page_size=1, page_token=token, **fields))
        assert refused.value.reason == "PAGE_TOKEN_MISMATCH", (caller, fields)
        assert [v.field for v in refused.value.field_violations] == ["page_token"]

    second = await ingest.as_(alice).ListVideos(
        pb.ListVideosRequest(page_size=1, page_token=token, filter="state = PENDING"))
    assert [v.name for v in second.videos] != [v.name for v in first.videos] and len(second.videos) == 1


# -- administrators, and what uploads make --------------------------------------------------------------------


async def test_an_admin_sees_changes_and_deletes_anyones(ingest: Ingest, video_bytes: bytes) -> None:
    alice = _user()
    video = await ingest.video_of(alice, "alice's")
    as_admin = ingest.as_(ADMIN)
    seen = await as_admin.GetVideo(pb.GetVideoRequest(name=f"videos/{video.id}"))
    assert seen.owner == f"users/{alice.user_id}"
    renamed = await as_admin.UpdateVideo(pb.UpdateVideoRequest(
        video=pb.Video(name=f"videos/{video.id}", title="moderated"),
        update_mask=field_mask_pb2.FieldMask(paths=["title"])))
    assert (renamed.title, renamed.owner) == ("moderated", f"users/{alice.user_id}")
    await as_admin.DeleteVideo(pb.DeleteVideoRequest(name=f"videos/{video.id}"))
    await _refusal(ingest.as_(alice).GetVideo(pb.GetVideoRequest(name=f"videos/{video.id}")))

    # An upload Alice opened and an administrator completed is still Alice's, and so is its job.
    upload = await ingest.as_(alice).CreateUpload(pb.CreateUploadRequest(upload=pb.Upload(filename="clip.mp4")))
    await ingest.as_(alice).WriteUpload(pb.WriteUploadRequest(
        name=upload.name, offset=0, data=httpbody_pb2.HttpBody(data=video_bytes)))
    assert (await as_admin.GetUpload(pb.GetUploadRequest(name=upload.name))).committed_size == len(video_bytes)
    completed = await as_admin.CompleteUpload(pb.CompleteUploadRequest(name=upload.name, title="finished"))
    assert completed.owner == f"users/{alice.user_id}"
    assert (await ingest.as_(alice).GetVideo(pb.GetVideoRequest(name=completed.name))).title == "finished"
    [submit] = await ingest.pool.fetch("SELECT payload FROM outbox WHERE topic = $1 AND position($2::bytea IN "
                                       "payload) > 0", SUBMIT_JOB_TOPIC, completed.name.encode())
    request = pipeline_pb.SubmitVideoJobRequest.FromString(submit["payload"])
    assert request.owner == f"users/{alice.user_id}"


async def test_a_streamed_video_is_its_senders(ingest: Ingest, video_bytes: bytes) -> None:
    alice, bob = _user(), _user()

    async def stream() -> AsyncIterator[pb.UploadVideoRequest]:
        yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="clip.mp4", title="streamed"))
        yield pb.UploadVideoRequest(chunk=video_bytes)

    video = await ingest.as_(alice).UploadVideo(stream())
    assert video.owner == f"users/{alice.user_id}"
    await _refusal(ingest.as_(bob).GetVideo(pb.GetVideoRequest(name=video.name)))
    assert (await ingest.as_(alice).GetVideo(pb.GetVideoRequest(name=video.name))).title == "streamed"


# -- rows from before ownership -------------------------------------------------------------------------------


async def test_rows_from_before_ownership_are_seen_by_admins_only(pg_dsn: str, tmp_path: Path) -> None:
    before = tmp_path / "migrations-before-owners"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0003":
            shutil.copy(path, before / path.name)
    async with fresh_database(pg_dsn) as dsn:
        await migrate(dsn, before, schema=SCHEMA)
        video_id, upload_id = uuid.uuid4(), uuid.uuid4()
        conn = await asyncpg.connect(dsn, server_settings=search_path(SCHEMA))
        try:
            await conn.execute("INSERT INTO videos (id, title, blob_key, state) VALUES ($1, 'old', 'b', 'READY')",
                               video_id)
            await conn.execute("INSERT INTO uploads (id, state, expire_time) VALUES ($1, 'ACTIVE', "
                               "now() + interval '1 day')", upload_id)
        finally:
            await conn.close()

        pool = await create_pool(dsn, migrations=MIGRATIONS, schema=SCHEMA, max_size=2)
        try:
            ingest = _ingest(pool, tmp_path)
            assert (await ingest.videos.get(video_id)).owner_id == UNOWNED
            user = _user()
            await _refusal(ingest.as_(user).GetVideo(pb.GetVideoRequest(name=f"videos/{video_id}")))
            await _refusal(ingest.as_(user).GetUpload(pb.GetUploadRequest(name=_upload_name(upload_id))))
            assert (await ingest.as_(user).ListVideos(pb.ListVideosRequest())).total_size == 0
            seen = await ingest.as_(ADMIN).GetVideo(pb.GetVideoRequest(name=f"videos/{video_id}"))
            assert seen.owner == f"users/{UNOWNED}"
            assert (await ingest.as_(ADMIN).GetUpload(pb.GetUploadRequest(name=_upload_name(upload_id)))).name
            listed = await ingest.as_(ADMIN).ListVideos(pb.ListVideosRequest())
            assert [v.name for v in listed.videos] == [f"videos/{video_id}"] and listed.total_size == 1
            # From now on every row names its owner: one that does not is refused, not hidden.
            with pytest.raises(asyncpg.NotNullViolationError):
                await pool.execute("INSERT INTO videos (id, blob_key, state) VALUES ($1, 'b', 'PENDING')",
                                   uuid.uuid4())
        finally:
            await pool.close()
