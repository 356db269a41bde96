"""SearchService gRPC servicer: the caller (bound by the authentication interceptor) goes to the domain, which
scopes every search and read to the clips they own."""

from __future__ import annotations

from clipmind.search.v1 import search_service_pb2 as pb
from clipmind.search.v1 import search_service_pb2_grpc

from services.common import request_context
from services.common.blobstore import BlobStore
from services.common.convert import from_timestamp
from services.common.errors import invalid_field
from services.common.grpc_server import Context
from services.common.names import clip_name, parse_clip_name, parse_video_name, transcript_segment_name, video_name
from services.common.request_context import principal
from services.search.browse import Browser
from services.search.records import Clip
from services.search.searcher import Searcher, SearchHit, SearchQuery


def clip_to_pb(clip: Clip, blobs: BlobStore) -> pb.Clip:
    playback = blobs.url(clip.video_blob_key)
    return pb.Clip(
        name=clip_name(clip.id),
        video=video_name(clip.video_id),
        video_title=clip.video_title,
        start_seconds=clip.start_s,
        end_seconds=clip.end_s,
        thumbnail_uri=blobs.url(clip.thumbnail_key),
        playback_uri=f"{playback}#t={clip.start_s:.3f},{clip.end_s:.3f}" if playback else "",
        transcript=clip.transcript,
    )


_SIGNALS = {"visual": pb.SIGNAL_VISUAL, "transcript": pb.SIGNAL_TRANSCRIPT, "lexical": pb.SIGNAL_LEXICAL}
_FUSIONS: dict[int, str] = {pb.FUSION_UNSPECIFIED: "", pb.FUSION_WEIGHTED: "weighted", pb.FUSION_RRF: "rrf"}


def hit_to_pb(hit: SearchHit, blobs: BlobStore) -> pb.SearchResult:
    return pb.SearchResult(
        clip=clip_to_pb(hit.clip, blobs), score=hit.score, visual_score=hit.visual_score,
        transcript_score=hit.transcript_score, matched_text=hit.matched_text,
        match_start_seconds=hit.match_start_s, match_end_seconds=hit.match_end_s,
        lexical_score=hit.lexical_score, matched_signals=[_SIGNALS[s] for s in hit.signals],
        match_thumbnail_uri=blobs.url(hit.match_thumbnail_key or hit.clip.thumbnail_key),
    )


def server_timing(timings: dict[str, float]) -> str:
    """The stages' milliseconds as an HTTP ``Server-Timing`` value (Envoy passes it to REST clients)."""
    return ", ".join(f"{stage};dur={ms:.2f}" for stage, ms in timings.items())


def query_from_pb(request: pb.SearchRequest) -> SearchQuery:
    f = request.filter
    return SearchQuery(
        text=request.query,
        image=request.image,
        video_ids=tuple(parse_video_name(v, field=f"filter.videos[{i}]") for i, v in enumerate(f.videos)),
        min_duration_s=f.min_duration_seconds,
        max_duration_s=f.max_duration_seconds,
        created_after=from_timestamp(f, "created_after"),
        created_before=from_timestamp(f, "created_before"),
        weights={"visual": request.weights.visual, "transcript": request.weights.transcript,
                 "lexical": request.weights.lexical},
        min_score=request.min_score,
        page_size=request.page_size,
        page_token=request.page_token,
        fusion=_fusion(request.fusion),
        group_by_video=request.group_by_video,
    )


def _fusion(value: int) -> str:
    try:
        return _FUSIONS[value]
    except KeyError:
        raise invalid_field("fusion", f"unknown fusion {value}") from None


class SearchServicer(search_service_pb2_grpc.SearchServiceServicer):
    def __init__(self, searcher: Searcher, blobs: BlobStore, browser: Browser) -> None:
        self._searcher = searcher
        self._blobs = blobs
        self._browser = browser

    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        page = await self._searcher.search(query_from_pb(request), principal())
        timings = {"auth": request_context.current().auth_ms, **page.timings}  # auth: before the servicer
        await context.send_initial_metadata((("server-timing", server_timing(timings)),))
        return pb.SearchResponse(
            results=[hit_to_pb(h, self._blobs) for h in page.hits],
            next_page_token=page.next_page_token,
            search_id=str(page.search_id),
        )

    async def FindSimilarClips(
        self, request: pb.FindSimilarClipsRequest, context: Context
    ) -> pb.FindSimilarClipsResponse:
        clip_id = parse_clip_name(request.name)
        f = request.filter
        query = SearchQuery(
            video_ids=tuple(parse_video_name(v, field=f"filter.videos[{i}]") for i, v in enumerate(f.videos)),
            min_duration_s=f.min_duration_seconds, max_duration_s=f.max_duration_seconds,
            created_after=from_timestamp(f, "created_after"), created_before=from_timestamp(f, "created_before"),
            page_size=request.page_size, page_token=request.page_token,
        )
        page = await self._searcher.similar(clip_id, query, principal())
        return pb.FindSimilarClipsResponse(
            results=[hit_to_pb(h, self._blobs) for h in page.hits], next_page_token=page.next_page_token
        )

    async def GetClip(self, request: pb.GetClipRequest, context: Context) -> pb.Clip:
        clip = await self._searcher.get_clip(parse_clip_name(request.name), principal())
        return clip_to_pb(clip, self._blobs)

    async def ListClips(self, request: pb.ListClipsRequest, context: Context) -> pb.ListClipsResponse:
        video_id = parse_video_name(request.parent, "parent")
        clips, token = await self._browser.clips(video_id, principal(), request.page_size, request.page_token)
        return pb.ListClipsResponse(clips=[clip_to_pb(c, self._blobs) for c in clips], next_page_token=token)

    async def ListTranscriptSegments(self, request: pb.ListTranscriptSegmentsRequest,
                                     context: Context) -> pb.ListTranscriptSegmentsResponse:
        video_id = parse_video_name(request.parent, "parent")
        cues, token = await self._browser.transcript(video_id, principal(), request.page_size, request.page_token)
        return pb.ListTranscriptSegmentsResponse(next_page_token=token, transcript_segments=[
            pb.TranscriptSegment(name=transcript_segment_name(c.video_id, c.idx), clip=clip_name(c.clip_id),
                                 start_seconds=c.start_s, end_seconds=c.end_s, text=c.text) for c in cues])
