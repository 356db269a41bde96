"""IngestService gRPC servicer: convert, call the domain with the caller (``request_context.principal()``, bound
by the authentication interceptor), convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio
from clipmind.ingest.v1 import ingest_service_pb2 as pb
from clipmind.ingest.v1 import ingest_service_pb2_grpc
from google.protobuf import empty_pb2

from services.common import priority, request_context
from services.common.blobstore import BlobStore
from services.common.convert import enum_value, timestamp
from services.common.errors import Unimplemented, invalid_field
from services.common.grpc_server import Context
from services.common.names import job_name, parse_upload_name, parse_video_name, upload_name, user_name, video_name
from services.common.paging import bound_to, decode_token, encode_token, page_size
from services.ingest.ingestor import VideoIngestor
from services.ingest.inputs import SidecarInput, VideoMeta
from services.ingest.records import Upload, Video

MUTABLE_VIDEO_FIELDS = ("title", "description")


def video_to_pb(video: Video, blobs: BlobStore) -> pb.Video:
    return pb.Video(
        name=video_name(video.id),
        title=video.title,
        description=video.description,
        filename=video.filename,
        content_type=video.content_type,
        size_bytes=video.size_bytes,
        state=enum_value(pb.Video.State, "STATE", video.state),
        duration_seconds=video.duration_s,
        width=video.width,
        height=video.height,
        frame_rate=video.frame_rate,
        video_codec=video.video_codec,
        audio_codec=video.audio_codec,
        has_audio=video.has_audio,
        thumbnail_uri=blobs.url(video.thumbnail_key),
        playback_uri=blobs.url(video.blob_key),
        scene_count=video.scene_count,
        transcript_source=enum_value(
            pb.TranscriptSource, "TRANSCRIPT_SOURCE", video.transcript_source if video.state == "READY" else ""
        ),
        transcript_language=video.transcript_language if video.state == "READY" else "",
        job=job_name(video.job_id) if video.job_id else "",
        failure_reason=video.failure_reason,
        create_time=timestamp(video.create_time),
        update_time=timestamp(video.update_time),
        owner=user_name(video.owner_id),
    )


def upload_to_pb(upload: Upload) -> pb.Upload:
    return pb.Upload(
        name=upload_name(upload.id),
        filename=upload.filename,
        content_type=upload.content_type,
        size_bytes=upload.size_bytes,
        committed_size=upload.committed_size,
        state=enum_value(pb.Upload.State, "STATE", upload.state),
        create_time=timestamp(upload.create_time),
        expire_time=timestamp(upload.expire_time),
        video=video_name(upload.video_id) if upload.video_id else "",
    )


def sidecar_from_pb(msg: pb.SubtitleFile, present: bool) -> SidecarInput | None:
    if not present:
        return None
    which = msg.WhichOneof("content")
    if which is None:
        raise invalid_field("sidecar_subtitles.content", "give the subtitle file as text or data")
    data = msg.text.encode() if which == "text" else msg.data
    if msg.format not in pb.SubtitleFile.Format.values():
        raise invalid_field("sidecar_subtitles.format", f"unknown subtitle format {msg.format}")
    fmt = pb.SubtitleFile.Format.Name(msg.format).removeprefix("FORMAT_") if msg.format else ""
    return SidecarInput(data=data, format=fmt, filename=msg.filename, language=msg.language)


def _list_filter_state(expr: str) -> str | None:
    """The supported filter: ``state = READY`` (or ``state = "READY"``)."""
    if not expr.strip():
        return None
    key, _, value = expr.partition("=")
    value = value.strip().strip('"').upper().removeprefix("STATE_")
    if key.strip() != "state" or value not in ("PENDING", "PROCESSING", "READY", "FAILED"):
        raise invalid_field("filter", "supported: state = PENDING|PROCESSING|READY|FAILED")
    return value


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingestor: VideoIngestor, blobs: BlobStore) -> None:
        self._ingestor = ingestor
        self._blobs = blobs

    async def CreateUpload(self, request: pb.CreateUploadRequest, context: Context) -> pb.Upload:
        up = request.upload
        upload = await self._ingestor.create_upload(request_context.principal(), up.filename, up.content_type,
                                                    up.size_bytes)
        return upload_to_pb(upload)

    async def WriteUpload(self, request: pb.WriteUploadRequest, context: Context) -> pb.WriteUploadResponse:
        upload_id = parse_upload_name(request.name)
        committed = await self._ingestor.write_upload(request_context.principal(), upload_id, request.offset,
                                                      request.data.data)
        return pb.WriteUploadResponse(committed_size=committed)

    async def GetUpload(self, request: pb.GetUploadRequest, context: Context) -> pb.Upload:
        upload_id = parse_upload_name(request.name)
        return upload_to_pb(await self._ingestor.get_upload(request_context.principal(), upload_id))

    async def CompleteUpload(self, request: pb.CompleteUploadRequest, context: Context) -> pb.Video:
        upload_id = parse_upload_name(request.name)
        sidecar = sidecar_from_pb(request.sidecar_subtitles, request.HasField("sidecar_subtitles"))
        caller = request_context.principal()
        wanted = priority.requested(caller, request.priority)
        video = await self._ingestor.complete_upload(caller, upload_id, request.title, request.description, sidecar,
                                                     priority=wanted)
        return video_to_pb(video, self._blobs)

    async def UploadVideo(
        self, request_iterator: AsyncIterator[pb.UploadVideoRequest], context: Context
    ) -> pb.Video:
        caller = request_context.principal()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise invalid_field("metadata", "the first message of the stream must carry metadata",
                                reason="METADATA_FIRST")
        m = first.metadata
        meta = VideoMeta(m.filename, m.content_type, m.title, m.description, m.size_bytes,
                         sidecar_from_pb(m.sidecar_subtitles, m.HasField("sidecar_subtitles")),
                         priority.requested(caller, m.priority, "metadata.priority"))

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("payload") != "chunk":
                    raise invalid_field("metadata", "metadata may only be sent once, first",
                                        reason="METADATA_FIRST")
                yield message.chunk

        return video_to_pb(await self._ingestor.ingest_stream(caller, meta, chunks()), self._blobs)

    async def ImportVideo(self, request: pb.ImportVideoRequest, context: Context) -> pb.Video:
        raise Unimplemented("importing from a URL or bucket is not implemented yet", reason="NOT_IMPLEMENTED")

    async def GetVideo(self, request: pb.GetVideoRequest, context: Context) -> pb.Video:
        video_id = parse_video_name(request.name)
        return video_to_pb(await self._ingestor.get_video(request_context.principal(), video_id), self._blobs)

    async def ListVideos(self, request: pb.ListVideosRequest, context: Context) -> pb.ListVideosResponse:
        caller = request_context.principal()
        size = page_size(request.page_size)
        if request.order_by and request.order_by.strip() not in ("create_time desc",):
            raise invalid_field("order_by", "supported: create_time desc")
        state = _list_filter_state(request.filter)
        # A token continues only the list it came from: the same caller, filter and order.
        binding = bound_to(caller.user_id, "ListVideos", request.filter, request.order_by)
        videos = await self._ingestor.list_videos(caller, limit=size + 1,
                                                  after=decode_token(request.page_token, binding), state=state)
        token = ""
        if len(videos) > size:
            videos = videos[:size]
            last = videos[-1]
            assert last.create_time is not None
            token = encode_token(last.create_time, last.id, binding)
        return pb.ListVideosResponse(
            videos=[video_to_pb(v, self._blobs) for v in videos],
            next_page_token=token,
            total_size=await self._ingestor.count_videos(caller, state=state),
        )

    async def UpdateVideo(self, request: pb.UpdateVideoRequest, context: Context) -> pb.Video:
        video_id = parse_video_name(request.video.name, field="video.name")
        paths = list(request.update_mask.paths) or [
            f for f in MUTABLE_VIDEO_FIELDS if getattr(request.video, f)
        ]
        for path in paths:
            if path not in MUTABLE_VIDEO_FIELDS:
                raise invalid_field("update_mask", f"{path!r} cannot be updated; mutable: "
                                    + ", ".join(MUTABLE_VIDEO_FIELDS))
        values = {p: getattr(request.video, p) for p in paths}
        video = await self._ingestor.update_video(request_context.principal(), video_id, **values)
        return video_to_pb(video, self._blobs)

    async def DeleteVideo(self, request: pb.DeleteVideoRequest, context: Context) -> empty_pb2.Empty:
        await self._ingestor.delete_video(request_context.principal(), parse_video_name(request.name))
        return empty_pb2.Empty()


def register(server: grpc.aio.Server, ingest: IngestServicer) -> list[str]:
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
    return [pb.DESCRIPTOR.services_by_name["IngestService"].full_name]
