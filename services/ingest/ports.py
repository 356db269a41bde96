"""What the ingest domain (``ingestor``) needs from its storage and its outbox, as Protocols beside it; the
adapters are ``store.VideoStore``, ``store.UploadStore`` (PostgreSQL) and ``services.common.outbox.OutboxRelay``.

Every read and change of an existing upload or video takes ``owner``, the caller's scope (``Principal.scope``:
a user id, or None for everyone's), with no default: the domain cannot forget it. The storage filters by it
inside its queries, and another owner's object is NOT_FOUND exactly as a missing one is."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from services.ingest.records import Upload, Video


class Videos(Protocol):
    async def get(self, video_id: uuid.UUID, *, owner: uuid.UUID | None) -> Video:
        """NOT_FOUND (``VIDEO_NOT_FOUND``) when there is no such video of ``owner``."""

    async def existing(self, video_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``video_ids`` that have a row."""

    async def blob_keys_page(self, *, after: uuid.UUID | None, limit: int) -> list[tuple[uuid.UUID, str]]:
        """(id, source blob key) of every video, by id, a page at a time."""

    async def list_page(
        self, *, owner: uuid.UUID | None, limit: int, after: tuple[datetime, uuid.UUID] | None,
        state: str | None = None,
    ) -> list[Video]:
        """``owner``'s videos newest first, after the keyset position ``after`` (create_time, id)."""

    async def count(self, *, owner: uuid.UUID | None, state: str | None = None) -> int: ...

    async def create(self, video: Video, upload_id: uuid.UUID | None = None, *, lock: uuid.UUID | None = None,
                     priority: str = "STANDARD") -> int:
        """Store the video (completing the upload held under ``lock``) with its job submission (at ``priority``) in
        the outbox; returns the submission's outbox id."""

    async def update_fields(self, video_id: uuid.UUID, *, owner: uuid.UUID | None, **values: Any) -> Video: ...

    async def delete(self, video_id: uuid.UUID, *, owner: uuid.UUID | None) -> Video:
        """Delete the video; its jobs and index are deleted through the outbox."""


class Uploads(Protocol):
    async def create(self, upload: Upload) -> Upload: ...

    async def get(self, upload_id: uuid.UUID, *, owner: uuid.UUID | None) -> Upload:
        """NOT_FOUND (``UPLOAD_NOT_FOUND``) when there is no such upload of ``owner``."""

    async def advance(self, upload_id: uuid.UUID, expected_offset: int, new_size: int, *, lock: uuid.UUID) -> bool:
        """Move the committed size from ``expected_offset`` to ``new_size`` under ``lock``; False if moved."""

    async def expire(self) -> list[uuid.UUID]:
        """Cancel the active uploads past their expiry; their ids."""

    async def active_among(self, upload_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]: ...

    async def cancel(self, upload_id: uuid.UUID) -> None: ...

    def exclusive(self, upload_id: uuid.UUID, *, owner: uuid.UUID | None) -> AbstractAsyncContextManager[uuid.UUID]:
        """Hold ``owner``'s upload's lock for the block (its token fences the block's writes); ABORTED
        ``UPLOAD_BUSY`` when another request holds it, NOT_FOUND when there is no such upload of ``owner``."""


class Outbox(Protocol):
    """The relay that delivers what this service committed to its outbox (``services.common.outbox``)."""

    def wake(self) -> None: ...

    async def wait_delivered(self, outbox_id: int, timeout_s: float) -> bool: ...
