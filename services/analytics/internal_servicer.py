"""``clipmind.analytics.internal.v1.AnalyticsInternalService``: thin conversion to the search log."""

from __future__ import annotations

import uuid
from datetime import UTC as _UTC
from typing import Any

import grpc.aio
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as pb
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2_grpc as pb_grpc

from services.analytics.search_log import NO_USER, LoggedResult, LoggedSearch, SearchLogStore
from services.common.errors import invalid_field
from services.common.grpc_server import Context
from services.common.names import parse_clip_name, parse_user_name, parse_video_name
from services.common.request_context import current

MAX_SEARCHES_PER_CALL = 1000


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


class AnalyticsInternalServicer(pb_grpc.AnalyticsInternalServiceServicer):
    def __init__(self, log: SearchLogStore) -> None:
        self._log = log

    async def LogSearches(self, request: pb.LogSearchesRequest, context: Context) -> pb.LogSearchesResponse:
        if len(request.searches) > MAX_SEARCHES_PER_CALL:
            raise invalid_field("searches", f"at most {MAX_SEARCHES_PER_CALL} per call")
        searches = [_search(i, s) for i, s in enumerate(request.searches)]
        logged = await self._log.record(searches, caller=current().caller)
        return pb.LogSearchesResponse(logged_count=logged)


def register(server: grpc.aio.Server, servicer: AnalyticsInternalServicer) -> str:
    pb_grpc.add_AnalyticsInternalServiceServicer_to_server(servicer, server)
    return pb.DESCRIPTOR.services_by_name["AnalyticsInternalService"].full_name
