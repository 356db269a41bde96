"""Ingest: receiving video bytes (resumable uploads and streams), validating them, storing them, and
queueing their processing. Nothing is stored for input that fails validation.

Input is bounded here, whichever API it comes through: text fields by length and characters (only a file's
base name is kept), uploads by ``max_upload_bytes`` (refused at the byte that passes it, or at a declared size
over it) and the staging disk's free space (RESOURCE_EXHAUSTED), sidecars by size and a linear-time parse that
runs before the video is looked at: a bad sidecar leaves a resumable upload ACTIVE, to be completed again.

Every public operation takes the caller (a ``Principal``) first. An upload and its video belong to the user who
opened the upload or sent the stream; a user reaches only their own, administrators and the system everyone's
(``Principal.scope``, filtered inside the storage's queries), and another user's object is NOT_FOUND exactly
as a missing one is. The staging sweep runs as the system and sees every upload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath
from typing import BinaryIO

from services.common.blob_sweep import sweep_orphans
from services.common.blobstore import BlobStore
from services.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, invalid_field
from services.common.principal import Principal
from services.ingest.inputs import (
    MAX_CONTENT_TYPE_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_TITLE_CHARS,
    REASON_UPLOAD_TOO_LARGE,
    SUBTITLE_FORMATS,
    SidecarInput,
    VideoMeta,
    check_filename,
    check_sidecar,
    check_size,
    check_text,
    check_video_text,
    checked_meta,
)
from services.ingest.ports import Outbox, Uploads, Videos
from services.ingest.records import Upload, Video
from services.media.layout import source_key, subtitles_key, video_prefix
from services.media.media_types import container_extension
from services.media.probe import validate_video

log = logging.getLogger(__name__)

UPLOAD_TTL = timedelta(days=1)
# A staged file no active upload owns and untouched this long is left over from a dead process.
STAGING_STALE_AFTER = timedelta(hours=1)
DEFAULT_MIN_FREE_DISK_BYTES = 1024**3
REASON_INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"


# How long a completed upload waits for the pipeline to take its job before answering anyway (the outbox
# submits it later: an upload never fails because the pipeline service is away).
SUBMIT_WAIT_S = 2.0


class VideoIngestor:
    def __init__(
        self, videos: Videos, uploads: Uploads, blobs: BlobStore, outbox: Outbox,
        staging_dir: Path, *, max_upload_bytes: int, max_chunk_bytes: int,
        min_free_disk_bytes: int = DEFAULT_MIN_FREE_DISK_BYTES, submit_wait_s: float = SUBMIT_WAIT_S,
    ) -> None:
        self._videos = videos
        self._uploads = uploads
        self._blobs = blobs
        self._outbox = outbox
        self._submit_wait_s = submit_wait_s
        self._staging = staging_dir
        self._staging.mkdir(parents=True, exist_ok=True)
        self._max_upload = max_upload_bytes
        self._max_chunk = max_chunk_bytes
        self._min_free_disk = min_free_disk_bytes

    # -- resumable uploads -------------------------------------------------------------------

    def _staged(self, upload_id: uuid.UUID) -> Path:
        return self._staging / f"upload-{upload_id}"

    async def create_upload(self, caller: Principal, filename: str, content_type: str, size_bytes: int) -> Upload:
        """Open a resumable upload of ``size_bytes`` (0: not declared), owned by the caller, which must fit under
        the upload limit and in the staging disk's free space; ``filename`` is kept as its base name."""
        filename = check_filename(filename, "upload.filename")
        check_text(content_type, "upload.content_type", MAX_CONTENT_TYPE_CHARS)
        check_size(size_bytes, "upload.size_bytes", self._max_upload)
        await asyncio.to_thread(self._ensure_room, size_bytes)
        upload = Upload(uuid.uuid4(), "ACTIVE", datetime.now(UTC) + UPLOAD_TTL, owner_id=caller.user_id,
                        filename=filename, content_type=content_type, size_bytes=size_bytes)
        self._staged(upload.id).touch()
        return await self._uploads.create(upload)

    async def get_upload(self, caller: Principal, upload_id: uuid.UUID) -> Upload:
        return await self._uploads.get(upload_id, owner=caller.scope)

    async def write_upload(self, caller: Principal, upload_id: uuid.UUID, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; returns the committed size. Resending committed bytes is a no-op.

        Writes and the completion of one upload take its lock in turn, so bytes on disk up to the committed
        size are always those of the committed writes."""
        if offset < 0:
            raise invalid_field("offset", "must not be negative")
        if len(data) > self._max_chunk:
            raise invalid_field("data", f"chunk larger than {self._max_chunk} bytes", reason="CHUNK_TOO_LARGE")
        if offset + len(data) > self._max_upload:
            raise invalid_field("data", f"writes past the upload limit of {self._max_upload} bytes",
                                reason=REASON_UPLOAD_TOO_LARGE)
        async with self._uploads.exclusive(upload_id, owner=caller.scope) as lock:
            upload = await self._uploads.get(upload_id, owner=caller.scope)
            self._check_active(upload)
            committed = upload.committed_size
            if offset > committed:
                raise FailedPrecondition(
                    f"offset {offset} is past the committed size {committed}; resume from {committed}",
                    reason="UPLOAD_OFFSET_MISMATCH", metadata={"committed_size": str(committed)},
                )
            tail = data[committed - offset:]
            if not tail:
                return committed
            new_size = committed + len(tail)
            if new_size > self._max_upload or (upload.size_bytes and new_size > upload.size_bytes):
                raise invalid_field("data", "writes past the declared or allowed upload size",
                                    reason="UPLOAD_TOO_LARGE")
            await asyncio.to_thread(self._stage_at, self._staged(upload_id), committed, tail)
            if not await self._uploads.advance(upload_id, committed, new_size, lock=lock):
                raise FailedPrecondition("upload was written concurrently; fetch it and resume",
                                         reason="UPLOAD_CONFLICT")
            return new_size

    async def complete_upload(
        self, caller: Principal, upload_id: uuid.UUID, title: str, description: str, sidecar: SidecarInput | None,
        *, priority: str = "STANDARD",
    ) -> Video:
        """Validate and store the committed bytes as a video, once: a second completion, or a write while
        this one runs, fails (ABORTED ``UPLOAD_BUSY``, or FAILED_PRECONDITION once it is completed). The video
        is the upload's owner's, whoever completes it (an administrator may complete a user's upload).

        The request's own fields (title, description, sidecar subtitles) are checked first, before the lock:
        when they are bad the upload stays ACTIVE with its bytes, to be completed again with better ones.
        A bad video cancels the upload."""
        check_video_text(title, description)
        sidecar_format = "" if sidecar is None else await asyncio.to_thread(check_sidecar, sidecar)
        async with self._uploads.exclusive(upload_id, owner=caller.scope) as lock:
            upload = await self._uploads.get(upload_id, owner=caller.scope)
            self._check_active(upload)
            if upload.size_bytes and upload.committed_size != upload.size_bytes:
                raise FailedPrecondition(
                    f"upload has {upload.committed_size} of {upload.size_bytes} bytes",
                    reason="UPLOAD_INCOMPLETE", metadata={"committed_size": str(upload.committed_size)},
                )
            meta = VideoMeta(upload.filename, upload.content_type, title, description, upload.committed_size,
                             sidecar, priority)
            staged = self._staged(upload_id)
            # Bytes past the committed size belong to a write that never committed (its process died).
            with contextlib.suppress(FileNotFoundError):  # gone: validation says the video is unreadable
                await asyncio.to_thread(os.truncate, staged, upload.committed_size)
            try:
                video = await self._ingest(staged, meta, upload.owner_id, upload_id=upload_id, lock=lock,
                                           sidecar_format=sidecar_format)
            except InvalidArgument:
                await self._uploads.cancel(upload_id)
                await asyncio.to_thread(staged.unlink, missing_ok=True)
                raise
            # Any other failure leaves the upload ACTIVE with its bytes: CompleteUpload can be called again.
            await asyncio.to_thread(staged.unlink, missing_ok=True)
            return video

    @staticmethod
    def _check_active(upload: Upload) -> None:
        if upload.state != "ACTIVE":
            raise FailedPrecondition(f"upload is {upload.state}", reason="UPLOAD_NOT_ACTIVE")
        if upload.expire_time < datetime.now(UTC):
            raise FailedPrecondition("upload expired", reason="UPLOAD_EXPIRED")

    async def sweep_staging(self, *, stale_after: timedelta = STAGING_STALE_AFTER) -> int:
        """Free the staging directory; returns the number of files deleted.

        Uploads past their expiry are cancelled and their bytes deleted. Files that no active upload owns
        (a process died between staging and its database row, or mid-stream) are deleted once untouched for
        ``stale_after``; a live upload or stream keeps writing its file, so it is never that old."""
        deleted = 0
        for upload_id in await self._uploads.expire():
            log.info("upload %s expired unfinished: cancelled, its staged bytes deleted", upload_id)
            deleted += await asyncio.to_thread(_unlink, self._staged(upload_id))
        cutoff = datetime.now(UTC).timestamp() - stale_after.total_seconds()
        files = await asyncio.to_thread(lambda: [p for p in self._staging.iterdir() if p.is_file()])
        owners = {p: _upload_id_of(p) for p in files}
        active = await self._uploads.active_among([u for u in owners.values() if u is not None])
        for path, owner in owners.items():
            if owner in active:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    deleted += await asyncio.to_thread(_unlink, path)
        return deleted

    async def sweep_blobs(self, *, grace_s: float) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """Remove the blobs of videos that have no row (untouched for ``grace_s``: never a video being stored now,
        ``services.common.blob_sweep``), and report the videos whose source blob is gone. Returns (the ids whose
        blobs were removed, the ids whose source is missing)."""
        removed = await sweep_orphans(self._blobs, "videos", self._videos.existing, grace_s=grace_s)
        missing: list[uuid.UUID] = []
        after: uuid.UUID | None = None
        while page := await self._videos.blob_keys_page(after=after, limit=500):
            for video_id, key in page:
                if key and not await self._blobs.exists(key):
                    missing.append(video_id)
            after = page[-1][0]
        if missing:
            log.error("%d video(s) have no source blob (their rows point to nothing): %s", len(missing),
                      ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else ""))
        return removed, missing

    # -- streamed uploads --------------------------------------------------------------------

    async def ingest_stream(self, caller: Principal, meta: VideoMeta, chunks: AsyncIterator[bytes]) -> Video:
        """Store a streamed video, owned by the caller. Its metadata and sidecar are checked before the first
        chunk is read; the stream is refused at the chunk that passes the upload limit or the declared size, or
        that would leave the staging disk too full. Nothing is kept when it fails."""
        meta = checked_meta(meta, self._max_upload)
        sidecar_format = "" if meta.sidecar is None else await asyncio.to_thread(check_sidecar, meta.sidecar)
        await asyncio.to_thread(self._ensure_room, meta.size_bytes)
        staged = self._staging / f"stream-{uuid.uuid4()}"
        size = 0
        try:
            with staged.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self._max_upload:
                        raise invalid_field("chunk", f"video larger than {self._max_upload} bytes",
                                            reason=REASON_UPLOAD_TOO_LARGE)
                    if meta.size_bytes and size > meta.size_bytes:
                        raise invalid_field("chunk", f"more than the {meta.size_bytes} bytes declared in "
                                            "metadata.size_bytes", reason="UPLOAD_SIZE_MISMATCH")
                    await asyncio.to_thread(self._stage_chunk, out, chunk)
            if meta.size_bytes and size != meta.size_bytes:
                raise invalid_field("metadata.size_bytes", f"declared {meta.size_bytes} bytes, the stream "
                                    f"had {size}", reason="UPLOAD_SIZE_MISMATCH")
            return await self._ingest(staged, meta, caller.user_id, sidecar_format=sidecar_format)
        finally:
            staged.unlink(missing_ok=True)

    # -- common path -------------------------------------------------------------------------

    async def _ingest(self, staged: Path, meta: VideoMeta, owner: uuid.UUID, upload_id: uuid.UUID | None = None,
                      lock: uuid.UUID | None = None, *, sidecar_format: str = "") -> Video:
        """Validate, store the blob(s), create ``owner``'s video row with its job submission (outbox). Stores
        nothing on failure; the staged file is left to the caller (a stream removes it, a resumable upload keeps
        it for a retry). Callers check the sidecar first (``sidecar_format``), so an InvalidArgument here is the
        video's."""
        if meta.sidecar is not None and not sidecar_format:
            sidecar_format = await asyncio.to_thread(check_sidecar, meta.sidecar)
        info = await validate_video(staged, field="video")
        video_id = uuid.uuid4()
        ext = _extension(info.format_name, info.codecs)
        video = Video(
            video_id, source_key(video_id, ext), "PENDING", owner_id=owner,
            title=meta.title or PurePath(meta.filename).stem or "untitled",
            description=meta.description, filename=meta.filename,
            content_type=meta.content_type or "application/octet-stream",
            size_bytes=staged.stat().st_size, duration_s=info.duration_s, width=info.width,
            height=info.height, frame_rate=info.frame_rate, video_codec=info.video_codec,
            audio_codec=info.audio_codec, has_audio=info.has_audio,
        )
        try:
            await self._blobs.put_file(video.blob_key, staged, move=upload_id is None)
            if meta.sidecar is not None:
                video.sidecar_key = subtitles_key(video_id, SUBTITLE_FORMATS[sidecar_format])
                video.sidecar_format = sidecar_format
                video.sidecar_language = meta.sidecar.language
                await self._blobs.put_bytes(video.sidecar_key, meta.sidecar.data)
            submission = await self._videos.create(video, upload_id, lock=lock, priority=meta.priority)
        except BaseException:
            await self._blobs.delete_prefix(video_prefix(video_id))
            raise
        # Stored: from here on the upload succeeds. The pipeline usually has the job within milliseconds;
        # while it is away the outbox keeps submitting, and the upload answers without waiting longer.
        self._outbox.wake()
        if not await self._outbox.wait_delivered(submission, self._submit_wait_s):
            log.warning("video %s stored; the pipeline has not taken its job yet (it will be submitted when the "
                        "pipeline service answers)", video_id)
        return await self._videos.get(video_id, owner=owner)

    # -- video resources ---------------------------------------------------------------------

    async def get_video(self, caller: Principal, video_id: uuid.UUID) -> Video:
        return await self._videos.get(video_id, owner=caller.scope)

    async def list_videos(
        self, caller: Principal, *, limit: int, after: tuple[datetime, uuid.UUID] | None, state: str | None = None
    ) -> list[Video]:
        """The caller's videos (an administrator's: everyone's) newest first, after the keyset position
        ``after`` (the last one seen's create time and id), in ``state`` if given."""
        return await self._videos.list_page(owner=caller.scope, limit=limit, after=after, state=state)

    async def count_videos(self, caller: Principal, *, state: str | None = None) -> int:
        """How many videos ``list_videos`` pages through in all."""
        return await self._videos.count(owner=caller.scope, state=state)

    async def update_video(
        self, caller: Principal, video_id: uuid.UUID, *, title: str | None = None, description: str | None = None
    ) -> Video:
        """Set a video's title and/or description (None: unchanged), held to the limits of an upload."""
        values: dict[str, str] = {}
        if title is not None:
            values["title"] = check_text(title, "video.title", MAX_TITLE_CHARS)
        if description is not None:
            values["description"] = check_text(description, "video.description", MAX_DESCRIPTION_CHARS,
                                               multiline=True)
        video = await self._videos.update_fields(video_id, owner=caller.scope, **values)
        self._outbox.wake()  # search's copy of the title
        return video

    async def delete_video(self, caller: Principal, video_id: uuid.UUID) -> None:
        """Delete the video and its blobs; its jobs (a running one is cancelled) and its index are deleted by
        the pipeline and search services when the outbox delivers the deletion (at once, or when they are
        back)."""
        await self._videos.delete(video_id, owner=caller.scope)
        self._outbox.wake()
        await self._blobs.delete_prefix(video_prefix(video_id))

    # -- staging disk ------------------------------------------------------------------------

    def _ensure_room(self, incoming: int) -> None:
        """RESOURCE_EXHAUSTED unless ``incoming`` more bytes leave ``min_free_disk_bytes`` free on the staging
        disk. Blocking (statvfs): runs in a thread, with the write it guards."""
        if shutil.disk_usage(self._staging).free - incoming < self._min_free_disk:
            raise ResourceExhausted("the server is short of disk space for uploads; try again later",
                                    reason=REASON_INSUFFICIENT_STORAGE)

    def _stage_at(self, path: Path, offset: int, data: bytes) -> None:
        self._ensure_room(len(data))
        _write_at(path, offset, data)

    def _stage_chunk(self, out: BinaryIO, chunk: bytes) -> None:
        self._ensure_room(len(chunk))
        out.write(chunk)


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def _upload_id_of(path: Path) -> uuid.UUID | None:
    """The upload a staged file belongs to (``upload-<id>``), None for streams and strays."""
    if not path.name.startswith("upload-"):
        return None
    try:
        return uuid.UUID(path.name.removeprefix("upload-"))
    except ValueError:
        return None


def _write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _extension(format_name: str, codecs: tuple[str, ...]) -> str:
    """The stored source's extension: from the allow-list of containers, by what ffprobe found; never
    from the client's filename (``x.html``, ``x.svg``, ``x.m3u8`` are stored and served as video)."""
    return container_extension(format_name, codecs)
