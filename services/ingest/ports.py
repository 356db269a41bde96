"""What the ingest domain (``ingestor``) needs from its storage and its outbox, as Protocols beside it; the
adapters are ``store.VideoStore``, ``store.UploadStore`` (PostgreSQL) and ``services.common.outbox.OutboxRelay``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from services.ingest.records import Upload, Video


class Videos(Protocol):
    async def get(self, video_id: uuid.UUID) -> Video:
        """NOT_FOUND (``VIDEO_NOT_FOUND``) when there is no such video."""

    async def create(self, video: Video, upload_id: uuid.UUID | None = None, *, lock: uuid.UUID | None = None) -> int:
        """Store the video (completing the upload held under ``lock``) with its job submission in the outbox;
        returns the submission's outbox id."""

    async def update_fields(self, video_id: uuid.UUID, **values: Any) -> Video: ...

    async def delete(self, video_id: uuid.UUID) -> Video:
        """Delete the video; its jobs and index are deleted through the outbox."""


class Uploads(Protocol):
    async def create(self, upload: Upload) -> Upload: ...

    async def get(self, upload_id: uuid.UUID) -> Upload:
        """NOT_FOUND (``UPLOAD_NOT_FOUND``) when there is no such upload."""

    async def advance(self, upload_id: uuid.UUID, expected_offset: int, new_size: int, *, lock: uuid.UUID) -> bool:
        """Move the committed size from ``expected_offset`` to ``new_size`` under ``lock``; False if moved."""

    async def expire(self) -> list[uuid.UUID]:
        """Cancel the active uploads past their expiry; their ids."""

    async def active_among(self, upload_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]: ...

    async def cancel(self, upload_id: uuid.UUID) -> None: ...

    def exclusive(self, upload_id: uuid.UUID) -> AbstractAsyncContextManager[uuid.UUID]:
        """Hold the upload's lock for the block (its token fences the block's writes); ABORTED ``UPLOAD_BUSY``
        when another request holds it."""


class Outbox(Protocol):
    """The relay that delivers what this service committed to its outbox (``services.common.outbox``)."""

    def wake(self) -> None: ...

    async def wait_delivered(self, outbox_id: int, timeout_s: float) -> bool: ...
