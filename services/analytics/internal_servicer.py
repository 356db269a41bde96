"""``clipmind.analytics.internal.v1.AnalyticsInternalService``: thin conversion to the search log and the usage
record."""

from __future__ import annotations

import math
import uuid
from datetime import UTC as _UTC
from typing import Any

import grpc.aio
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as pb
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2_grpc as pb_grpc

from services.analytics.search_log import NO_USER, LoggedResult, LoggedSearch, SearchLogStore
from services.analytics.usage import KINDS, UsageEvent, UsageStore
from services.common.errors import invalid_field
from services.common.grpc_server import Context
from services.common.names import clip_name, parse_clip_name, parse_user_name, parse_video_name, video_name
from services.common.request_context import current

MAX_SEARCHES_PER_CALL = 1000
MAX_EVENTS_PER_CALL = 1000
_KINDS = {pb.UsageEvent.Kind.Value(f"KIND_{k}"): k for k in KINDS}


def _search(i: int, s: pb.LoggedSearch) -> LoggedSearch:
    """One search, checked. Who searched (``user``) may be missing: the search service's outbox still holds
    searches logged before it sent users, and refusing them would block that outbox for good; they are stored
    with ``NO_USER``. A malformed user is refused naming the field."""
    where = f"searches[{i}]"
    user = parse_user_name(s.user, f"{where}.user") if s.user else NO_USER
    try:
        search_id = uuid.UUID(s.search_id)
    except ValueError:
        raise invalid_field(f"{where}.search_id", "not a UUID") from None
    if not s.HasField("search_time"):
        raise invalid_field(f"{where}.search_time", "required", reason="REQUIRED_FIELD")
    results = tuple(
        LoggedResult(parse_clip_name(r.clip, f"{where}.results[{j}].clip"),
                     parse_video_name(r.video, f"{where}.results[{j}].video"), r.rank, r.score)
        for j, r in enumerate(s.results)
    )
    return LoggedSearch(search_id, s.query, s.image_query, s.result_count, s.latency_ms,
                        s.search_time.ToDatetime().replace(tzinfo=_UTC), s.page_offset, results, user, s.fusion,
                        _filters(s.filter, f"{where}.filter") if s.HasField("filter") else {})


def _filters(f: pb.LoggedFilter, where: str) -> dict[str, Any]:
    """A search's filters as the log keeps them (JSON), the unset ones left out."""
    out: dict[str, Any] = {}
    if f.videos:
        out["videos"] = [str(parse_video_name(v, f"{where}.videos[{i}]")) for i, v in enumerate(f.videos)]
    if f.min_duration_seconds:
        out["min_duration_seconds"] = f.min_duration_seconds
    if f.max_duration_seconds:
        out["max_duration_seconds"] = f.max_duration_seconds
    for name in ("created_after", "created_before"):
        if f.HasField(name):
            out[name] = getattr(f, name).ToDatetime().replace(tzinfo=_UTC).isoformat()
    return out


def _usage_event(i: int, e: pb.UsageEvent) -> UsageEvent:
    """One usage fact, checked, each bad field named."""
    where = f"events[{i}]"
    try:
        event_id = uuid.UUID(e.event_id)
    except ValueError:
        raise invalid_field(f"{where}.event_id", "not a UUID") from None
    if e.kind not in _KINDS:
        raise invalid_field(f"{where}.kind", "required: one of " + ", ".join(KINDS))
    if not e.HasField("event_time"):
        raise invalid_field(f"{where}.event_time", "required", reason="REQUIRED_FIELD")
    if e.bytes < 0:
        raise invalid_field(f"{where}.bytes", "must not be negative")
    if not math.isfinite(e.seconds) or e.seconds < 0:
        raise invalid_field(f"{where}.seconds", "must be a finite number, not negative")
    return UsageEvent(event_id, parse_user_name(e.user, f"{where}.user"), _KINDS[e.kind],
                      e.event_time.ToDatetime().replace(tzinfo=_UTC),
                      parse_video_name(e.video, f"{where}.video") if e.video else None, e.bytes, e.seconds)


class AnalyticsInternalServicer(pb_grpc.AnalyticsInternalServiceServicer):
    def __init__(self, log: SearchLogStore, usage: UsageStore) -> None:
        self._log = log
        self._usage = usage

    async def LogSearches(self, request: pb.LogSearchesRequest, context: Context) -> pb.LogSearchesResponse:
        if len(request.searches) > MAX_SEARCHES_PER_CALL:
            raise invalid_field("searches", f"at most {MAX_SEARCHES_PER_CALL} per call")
        searches = [_search(i, s) for i, s in enumerate(request.searches)]
        logged = await self._log.record(searches, caller=current().caller)
        return pb.LogSearchesResponse(logged_count=logged)

    async def GetSearchResults(self, request: pb.GetSearchResultsRequest,
                               context: Context) -> pb.GetSearchResultsResponse:
        try:
            search_id = uuid.UUID(request.search_id)
        except ValueError:
            raise invalid_field("search_id", "not a search id (a UUID)") from None
        user = parse_user_name(request.user, "user") if request.user else None
        found = await self._log.results(search_id, user=user)
        return pb.GetSearchResultsResponse(results=[
            pb.LoggedResult(clip=clip_name(r.clip_id), video=video_name(r.video_id), rank=r.rank, score=r.score)
            for r in found])

    async def RecordUsage(self, request: pb.RecordUsageRequest, context: Context) -> pb.RecordUsageResponse:
        if len(request.events) > MAX_EVENTS_PER_CALL:
            raise invalid_field("events", f"at most {MAX_EVENTS_PER_CALL} per call")
        events = [_usage_event(i, e) for i, e in enumerate(request.events)]
        recorded = await self._usage.record(events, caller=current().caller) if events else 0
        return pb.RecordUsageResponse(recorded_count=recorded)


def register(server: grpc.aio.Server, servicer: AnalyticsInternalServicer) -> str:
    pb_grpc.add_AnalyticsInternalServiceServicer_to_server(servicer, server)
    return pb.DESCRIPTOR.services_by_name["AnalyticsInternalService"].full_name
