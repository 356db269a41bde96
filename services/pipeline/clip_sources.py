"""Adapter: the clips a compilation is asked for as, resolved where they live — their spans from the search service
(``SearchInternalService.GetClipSpans``), a search's ranked results from analytics' search log
(``AnalyticsInternalService.GetSearchResults``)."""

from __future__ import annotations

import uuid
from typing import Any

from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb
from clipmind.search.internal.v1 import search_internal_service_pb2 as search_pb

from services.common.names import clip_name, parse_clip_name, parse_video_name, user_name
from services.pipeline.records import ClipSpan


class ClipSourcesClient:
    def __init__(self, search: Any, analytics: Any) -> None:
        self._search = search  # SearchInternalService stub
        self._analytics = analytics  # AnalyticsInternalService stub

    async def spans(self, clip_ids: list[uuid.UUID], *, owner: uuid.UUID | None) -> dict[uuid.UUID, ClipSpan]:
        answer = await self._search.GetClipSpans(search_pb.GetClipSpansRequest(
            clips=[clip_name(c) for c in clip_ids], owner=user_name(owner) if owner is not None else ""))
        spans = [ClipSpan(parse_clip_name(s.clip, "clip"), parse_video_name(s.video, "video"), s.start_seconds,
                          s.end_seconds) for s in answer.spans]
        return {s.clip_id: s for s in spans}

    async def search_results(self, search_id: uuid.UUID, *, user: uuid.UUID | None) -> list[uuid.UUID]:
        answer = await self._analytics.GetSearchResults(analytics_pb.GetSearchResultsRequest(
            search_id=str(search_id), user=user_name(user) if user is not None else ""))
        return [parse_clip_name(r.clip, "clip") for r in answer.results]
