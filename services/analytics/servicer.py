"""``clipmind.analytics.v1.AnalyticsService``: interactions in, reports out, each scoped to the caller.

A user records interactions with their own searches' results and reads reports of their own records (naming another
user is NOT_FOUND); an administrator reads everyone's, or one user's (``user``). GetUsage needs what ingest and the
pipeline know (videos, bytes, processing time), which analytics does not receive yet: it answers UNIMPLEMENTED,
saying so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clipmind.analytics.v1 import analytics_service_pb2 as pb
from clipmind.analytics.v1 import analytics_service_pb2_grpc as pb_grpc
from google.protobuf.duration_pb2 import Duration

from services.analytics.interactions import Interaction, InteractionStore, NewInteraction
from services.analytics.reports import Reports
from services.common.convert import from_timestamp, timestamp
from services.common.errors import NotFound, Unimplemented, invalid_field
from services.common.grpc_server import Context
from services.common.names import clip_name, parse_clip_name, parse_user_name, user_name
from services.common.paging import bound_to, decode_offset, encode_offset, page_size
from services.common.principal import Principal
from services.common.request_context import principal

_TYPES = {pb.Interaction.TYPE_IMPRESSION: "IMPRESSION", pb.Interaction.TYPE_CLICK: "CLICK",
          pb.Interaction.TYPE_PLAY: "PLAY", pb.Interaction.TYPE_SHARE: "SHARE"}
_TYPE_VALUES = {name: value for value, name in _TYPES.items()}
DEFAULT_PAGE, MAX_PAGE = 20, 500


def _interaction_to_pb(i: Interaction) -> pb.Interaction:
    return pb.Interaction(
        name=f"interactions/{i.id}", search_id=str(i.search_id) if i.search_id else "", clip=clip_name(i.clip_id),
        type=_TYPE_VALUES[i.type], rank=i.rank, user=user_name(i.user_id), create_time=timestamp(i.create_time),
        watched_seconds=i.watched_seconds)


def _window(request: Any) -> tuple[datetime | None, datetime | None]:
    start, end = from_timestamp(request, "start_time"), from_timestamp(request, "end_time")
    if start is not None and end is not None and end <= start:
        raise invalid_field("end_time", "must be after start_time")
    return start, end


def _scope(caller: Principal, requested: str) -> uuid.UUID | None:
    """Whose records a report covers: a user's own (naming another user is NOT_FOUND, as for any other user's
    resource: whether that user exists is not theirs to learn); for administrators the named user's, or
    everyone's (None)."""
    named = parse_user_name(requested, "user") if requested else None
    if caller.is_admin:
        return named
    if named is not None and named != caller.user_id:
        raise NotFound(f"{requested} not found", reason="USER_NOT_FOUND", metadata={"user": requested})
    return caller.user_id


@dataclass(frozen=True)
class _Page:
    """A report list's request: whose records, the window, and the page (an offset token bound to the caller and
    the request)."""

    user: uuid.UUID | None
    start: datetime | None
    end: datetime | None
    size: int
    offset: int
    binding: str

    @classmethod
    def of(cls, request: Any, method: str) -> _Page:
        caller = principal()
        user = _scope(caller, request.user)
        start, end = _window(request)
        binding = bound_to(caller.user_id, method, user, start, end)
        return cls(user, start, end, page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE),
                   decode_offset(request.page_token, binding), binding)

    def next_token(self, found: int) -> str:
        """The next page's token when more than a page (``size + 1`` asked) was found."""
        return encode_offset(self.offset + self.size, self.binding) if found > self.size else ""


def _ms(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(value * 1_000_000))
    return duration


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    def __init__(self, interactions: InteractionStore, reports: Reports) -> None:
        self._interactions = interactions
        self._reports = reports

    async def RecordInteraction(self, request: pb.RecordInteractionRequest, context: Context) -> pb.Interaction:
        caller = principal()
        if not request.HasField("interaction"):
            raise invalid_field("interaction", "required", reason="REQUIRED_FIELD")
        i = request.interaction
        if not i.clip:
            raise invalid_field("interaction.clip", "required", reason="REQUIRED_FIELD")
        try:
            search_id = uuid.UUID(i.search_id) if i.search_id else None
        except ValueError:
            raise invalid_field("interaction.search_id", "not a search id (a UUID)") from None
        recorded = await self._interactions.record(NewInteraction(
            caller.user_id, search_id, parse_clip_name(i.clip, "interaction.clip"), _TYPES.get(i.type, ""),
            i.rank, i.watched_seconds, request.request_id))
        return _interaction_to_pb(recorded)

    async def GetSearchStats(self, request: pb.GetSearchStatsRequest, context: Context) -> pb.SearchStats:
        user = _scope(principal(), request.user)
        start, end = _window(request)
        stats = await self._reports.search_stats(start, end, user)
        p50, p95, p99 = stats.latency_ms
        return pb.SearchStats(
            search_count=stats.searches, click_through_rate=stats.click_through_rate,
            zero_result_rate=stats.zero_result_rate, latency_p50=_ms(p50), latency_p95=_ms(p95),
            latency_p99=_ms(p99), unique_user_count=stats.unique_users,
            mean_reciprocal_rank=stats.mean_reciprocal_rank, clicked_search_count=stats.clicked_searches)

    async def ListPopularQueries(self, request: pb.ListPopularQueriesRequest,
                                 context: Context) -> pb.ListPopularQueriesResponse:
        page = _Page.of(request, "ListPopularQueries")
        found = await self._reports.popular_queries(page.start, page.end, page.user, offset=page.offset,
                                                    limit=page.size + 1)
        return pb.ListPopularQueriesResponse(
            popular_queries=[pb.PopularQuery(
                query=q.query, search_count=q.searches, click_count=q.clicks,
                click_through_rate=q.clicked_searches / q.searches,
                zero_result_rate=q.zero_result_searches / q.searches,
            ) for q in found[:page.size]],
            next_page_token=page.next_token(len(found)))

    async def ListPopularClips(self, request: pb.ListPopularClipsRequest,
                               context: Context) -> pb.ListPopularClipsResponse:
        page = _Page.of(request, "ListPopularClips")
        found = await self._reports.popular_clips(page.start, page.end, page.user, offset=page.offset,
                                                  limit=page.size + 1)
        return pb.ListPopularClipsResponse(
            popular_clips=[pb.PopularClip(clip=clip_name(c.clip_id), click_count=c.clicks,
                                          impression_count=c.impressions, play_count=c.plays,
                                          watched_seconds=c.watched_seconds) for c in found[:page.size]],
            next_page_token=page.next_token(len(found)))

    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.Usage:
        raise Unimplemented("GetUsage needs uploads and processing time, which analytics does not receive yet",
                            reason="NOT_IMPLEMENTED")
