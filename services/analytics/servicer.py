"""``clipmind.analytics.v1.AnalyticsService``: interactions in, reports out, each scoped to the caller.

A user records interactions with their own searches' results and reads reports of their own records (naming another
user is NOT_FOUND); an administrator reads everyone's, or one user's (``user``). GetUsage names whose usage it
reads: ``users/{user}/usage``, ``users/me/usage``, or for administrators everyone's, ``users/-/usage``.
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
from services.analytics.usage import TooManyPeriods, UsageFigures, UsageStore
from services.common.convert import from_timestamp, timestamp
from services.common.errors import NotFound, PermissionDenied, invalid_field
from services.common.grpc_server import Context
from services.common.names import clip_name, parse_clip_name, parse_user_name, user_name
from services.common.paging import bound_to, decode_offset, encode_offset, page_size
from services.common.principal import Principal
from services.common.request_context import principal

_TYPES = {pb.Interaction.TYPE_IMPRESSION: "IMPRESSION", pb.Interaction.TYPE_CLICK: "CLICK",
          pb.Interaction.TYPE_PLAY: "PLAY", pb.Interaction.TYPE_SHARE: "SHARE"}
_TYPE_VALUES = {name: value for value, name in _TYPES.items()}
DEFAULT_PAGE, MAX_PAGE = 20, 500
_PERIODS = {pb.USAGE_PERIOD_LENGTH_DAY: "day", pb.USAGE_PERIOD_LENGTH_WEEK: "week",
            pb.USAGE_PERIOD_LENGTH_MONTH: "month"}


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


def _usage_owner(caller: Principal, name: str) -> uuid.UUID | None:
    """Whose usage ``users/{user}/usage`` names (None: everyone's, ``users/-/usage``, administrators only)."""
    user = name.removesuffix("/usage")
    if not name.endswith("/usage") or not user.startswith("users/"):
        raise invalid_field("name", f"must look like users/{{user}}/usage, got {name!r}", reason="INVALID_NAME")
    if user == "users/-":
        if not caller.is_admin:
            raise PermissionDenied("only administrators read everyone's usage", reason="ADMIN_ONLY",
                                   metadata={"name": name})
        return None
    return _scope(caller, user) if user != "users/me" else caller.user_id


def _usage_fields(f: UsageFigures) -> dict[str, Any]:
    """The figures as the fields Usage and UsagePeriod share."""
    return dict(search_count=f.searches, upload_count=f.uploads, uploaded_bytes=f.uploaded_bytes,
                processing_seconds=f.processing_seconds, processed_video_count=f.processed,
                processed_video_seconds=f.processed_seconds, deleted_video_count=f.deletions,
                deleted_bytes=f.deleted_bytes, stored_video_count=f.stored_videos, stored_bytes=f.stored_bytes,
                compilation_count=f.compilations)


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
    def __init__(self, interactions: InteractionStore, reports: Reports, usage: UsageStore) -> None:
        self._interactions = interactions
        self._reports = reports
        self._usage = usage

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
        caller = principal()
        user = _usage_owner(caller, request.name)
        start, end = _window(request)
        if request.period and request.period not in _PERIODS:
            raise invalid_field("period", f"unknown period {request.period}")
        try:
            report = await self._usage.report(start, end, user, _PERIODS.get(request.period))
        except TooManyPeriods as e:
            raise invalid_field("period", f"{e}: narrow the window (start_time, end_time) or take a longer period",
                                reason="TOO_MANY_PERIODS") from None
        return pb.Usage(
            name=f"{user_name(user) if user is not None else 'users/-'}/usage", start_time=timestamp(report.start),
            end_time=timestamp(report.end), **_usage_fields(report.totals),
            periods=[pb.UsagePeriod(start_time=timestamp(p.start), end_time=timestamp(p.end),
                                    **_usage_fields(p.figures)) for p in report.periods])
