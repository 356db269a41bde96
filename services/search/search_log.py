"""Logging searches to analytics without making a search wait for it.

A search hands its record to ``SearchLogBuffer.record`` (an append to a bounded in-memory buffer: no I/O,
no await). A background task moves what accumulated into the search service's own outbox table in one
insert per batch, every ``flush_s`` or as soon as ``batch_size`` records wait, and wakes the outbox relay,
which delivers the batch to ``AnalyticsInternalService.LogSearches``. Analytics being down or slow only
lets the outbox grow (in PostgreSQL, not in memory); it is logged there once per search id, however often
the relay has to deliver. Only while this service's own database is unreachable do records wait in memory,
up to ``max_pending``; past that the oldest are dropped and counted (a warning names how many), which is
the one way a search can go unlogged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence

from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb

from services.common import outbox
from services.common.db import Database
from services.common.names import clip_name, user_name, video_name
from services.search.records import SearchRecord

log = logging.getLogger(__name__)

TOPIC = "analytics.log_searches"


def to_message(records: Sequence[SearchRecord]) -> analytics_pb.LogSearchesRequest:
    """The records as analytics takes them, each with who searched (``users/{id}``)."""
    request = analytics_pb.LogSearchesRequest()
    for r in records:
        item = request.searches.add(
            search_id=str(r.search_id), query=r.query, image_query=r.image_query, result_count=r.result_count,
            latency_ms=r.latency_ms, page_offset=r.page_offset, user=user_name(r.user_id), fusion=r.fusion,
        )
        item.search_time.FromDatetime(r.search_time)
        if r.video_ids or r.min_duration_s or r.max_duration_s or r.created_after or r.created_before:
            item.filter.videos.extend(video_name(v) for v in r.video_ids)
            item.filter.min_duration_seconds = r.min_duration_s
            item.filter.max_duration_seconds = r.max_duration_s
            if r.created_after is not None:
                item.filter.created_after.FromDatetime(r.created_after)
            if r.created_before is not None:
                item.filter.created_before.FromDatetime(r.created_before)
        for res in r.results:
            item.results.add(clip=clip_name(res.clip_id), video=video_name(res.video_id), rank=res.rank,
                             score=res.score)
    return request


class SearchLogBuffer:
    def __init__(self, db: Database, relay: outbox.OutboxRelay | None = None, *, batch_size: int = 200,
                 flush_s: float = 0.2, max_pending: int = 100_000) -> None:
        self._db = db
        self._relay = relay
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._pending: collections.deque[SearchRecord] = collections.deque(maxlen=max_pending)
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, entry: SearchRecord) -> None:
        """Queue one search for the log (never blocks, never fails the search)."""
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("search log buffer full (database unreachable?): %d search(es) dropped", self.dropped)
        self._pending.append(entry)
        if len(self._pending) >= self._batch_size:
            self._full.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="search log flusher")

    async def stop(self) -> None:
        """Stop the flusher after a last flush (what cannot be written now is reported)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()
        except Exception as exc:
            log.warning("search log: %d search(es) not logged at shutdown: %s", len(self._pending), exc)

    async def flush(self) -> int:
        """Move everything pending into the outbox; returns how many records moved."""
        moved = 0
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
            try:
                async with self._db.acquire() as conn, conn.transaction():
                    await outbox.add(conn, TOPIC, to_message(batch).SerializeToString())
            except BaseException:
                self._pending.extendleft(reversed(batch))  # back in front, in order, for the next try
                raise
            moved += len(batch)
        if moved and self._relay is not None:
            self._relay.wake()
        return moved

    async def _run(self) -> None:
        delay = self._flush_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), timeout=delay)
            self._full.clear()
            try:
                await self.flush()
                delay = self._flush_s
            except Exception as exc:  # our database is away: keep the records, try again with backoff
                delay = min(max(delay * 2, 0.5), 10.0)
                log.warning("search log: cannot write %d pending search(es) (%s); retrying in %.1f s",
                            len(self._pending), exc, delay)
