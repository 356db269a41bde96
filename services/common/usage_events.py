"""Usage facts a service commits for analytics (GetUsage): a video stored, deleted or ready, a processing attempt's
worker time, a compilation rendered.

The producer calls :func:`add` in the transaction of the change itself (ingest's video insert, the pipeline's run
end, ...), so the fact exists exactly when the change does; the service's outbox relay delivers it with
:func:`handler` to ``AnalyticsInternalService.RecordUsage``. Each event gets its id here, when it is committed,
so a redelivery of the same row is recorded once (analytics dedupes by it). Analytics being down only delays the
figures.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as pb

from services.common import outbox
from services.common.convert import timestamp
from services.common.names import user_name, video_name
from services.common.outbox import Handler

TOPIC = "analytics.record_usage"
VIDEO_UPLOADED = pb.UsageEvent.KIND_VIDEO_UPLOADED
VIDEO_DELETED = pb.UsageEvent.KIND_VIDEO_DELETED
VIDEO_PROCESSED = pb.UsageEvent.KIND_VIDEO_PROCESSED
PROCESSING_RUN = pb.UsageEvent.KIND_PROCESSING_RUN
COMPILATION_RENDERED = pb.UsageEvent.KIND_COMPILATION_RENDERED


async def add(conn: asyncpg.Connection, kind: Any, user_id: uuid.UUID, *, video_id: uuid.UUID | None = None,
              size_bytes: int = 0, seconds: float = 0.0, at: datetime | None = None) -> int:
    """Commit one usage event inside the caller's transaction; returns its outbox id."""
    event = pb.UsageEvent(
        event_id=str(uuid.uuid4()), user=user_name(user_id), kind=kind, event_time=timestamp(at or datetime.now(UTC)),
        video=video_name(video_id) if video_id is not None else "", bytes=max(0, size_bytes),
        seconds=max(0.0, seconds))
    return await outbox.add(conn, TOPIC, event.SerializeToString())


def handler(analytics: Any) -> dict[str, Handler]:
    """The outbox handler of usage events, calling ``analytics`` (an AnalyticsInternalService stub)."""

    async def record(payload: bytes) -> None:
        await analytics.RecordUsage(pb.RecordUsageRequest(events=[pb.UsageEvent.FromString(payload)]))

    return {TOPIC: record}
