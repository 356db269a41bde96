"""Small clients the end-to-end tests use: REST through Envoy (httpx) and gRPC (generated stubs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from clipmind.pipeline.v1 import pipeline_service_pb2 as pipeline_pb
from clipmind.pipeline.v1 import pipeline_service_pb2_grpc as pipeline_grpc
from clipmind.search.v1 import search_service_pb2 as search_pb
from clipmind.search.v1 import search_service_pb2_grpc as search_grpc
from google.rpc import error_details_pb2, status_pb2

from services.common.auth import signer_from
from services.common.media_urls import MediaSigner

CHUNK = 1024 * 1024
GRPC_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.max_send_message_length", 16 * 1024 * 1024)]


def media_signer(mesh: Any, ttl_s: float = 900) -> MediaSigner:
    """The media-link signer of a running mesh (its keys from the state dir), to sign links the API did not give."""
    signer = signer_from((mesh.state_dir / "jwt.keys").read_text().strip(), issuer="clipmind", audience="clipmind-api")
    return MediaSigner.from_token_signer(signer, ttl_s=ttl_s)


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def authenticated_channel(target: str, credential: str, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A plaintext channel to ``target`` whose every call carries ``authorization: Bearer <credential>``.

    gRPC sends call credentials only over channels it deems secure; local TCP credentials are plaintext
    (loopback only) yet count as secure, which is what a client of the local mesh needs."""
    creds = grpc.composite_channel_credentials(grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
                                               grpc.access_token_call_credentials(credential))
    return grpc.secure_channel(target, creds, options=options or GRPC_OPTIONS)


def rest_upload(
    client: httpx.Client, path: Path, *, title: str = "", sidecar: Path | None = None,
    chunk: int = CHUNK,
) -> httpx.Response:
    """Resumable upload over REST: create, PUT raw chunks, complete. Returns the completion response."""
    data = path.read_bytes()
    # The HTTP rule maps the whole body to the `upload` field: the JSON is the Upload itself.
    created = client.post("/v1/uploads", json={
        "filename": path.name, "contentType": "video/mp4", "sizeBytes": str(len(data))})
    created.raise_for_status()
    name = created.json()["name"]
    offset = 0
    while offset < len(data) or offset == 0:
        piece = data[offset:offset + chunk]
        put = client.put(f"/v1/{name}:write", params={"offset": offset}, content=piece,
                         headers={"content-type": "application/octet-stream"})
        put.raise_for_status()
        offset = int(put.json()["committedSize"])
        if not piece:
            break
    body: dict[str, Any] = {"title": title or path.stem}
    if sidecar is not None:
        body["sidecarSubtitles"] = {"filename": sidecar.name, "text": sidecar.read_text(encoding="utf-8-sig")}
    return client.post(f"/v1/{name}:complete", json=body)


def grpc_upload(
    channel: grpc.Channel, path: Path, *, title: str = "", sidecar: Path | None = None
) -> ingest_pb.Video:
    def messages() -> Iterator[ingest_pb.UploadVideoRequest]:
        meta = ingest_pb.UploadMetadata(filename=path.name, title=title or path.stem,
                                        size_bytes=path.stat().st_size)
        if sidecar is not None:
            meta.sidecar_subtitles.filename = sidecar.name
            meta.sidecar_subtitles.data = sidecar.read_bytes()
        yield ingest_pb.UploadVideoRequest(metadata=meta)
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                yield ingest_pb.UploadVideoRequest(chunk=chunk)

    return ingest_grpc.IngestServiceStub(channel).UploadVideo(messages(), timeout=120)


def watch_job(channel: grpc.Channel, job: str, timeout: float = 300) -> list[pipeline_pb.JobEvent]:
    """The job's events to its end; heartbeats (keepalives of a quiet stream) are left out."""
    stub = pipeline_grpc.PipelineServiceStub(channel)
    return [e for e in stub.WatchJob(pipeline_pb.WatchJobRequest(name=job), timeout=timeout) if not e.heartbeat]


def wait_ready(channel: grpc.Channel, video: str, timeout: float = 300) -> ingest_pb.Video:
    stub = ingest_grpc.IngestServiceStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        got = stub.GetVideo(ingest_pb.GetVideoRequest(name=video), timeout=10)
        if got.state in (ingest_pb.Video.STATE_READY, ingest_pb.Video.STATE_FAILED):
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{video} still {ingest_pb.Video.State.Name(got.state)}")
        time.sleep(0.5)


def grpc_search(channel: grpc.Channel, query: str, **kwargs: Any) -> search_pb.SearchResponse:
    stub = search_grpc.SearchServiceStub(channel)
    return stub.Search(search_pb.SearchRequest(query=query, **kwargs), timeout=30)


def rest_search(client: httpx.Client, query: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/clips:search", json={"query": query, **body})
    response.raise_for_status()
    return dict(response.json())


def error_reason(response: httpx.Response) -> str:
    """The ErrorInfo reason of a transcoded google.rpc.Status JSON body."""
    for detail in response.json().get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason", ""))
    return ""


def error_fields(response: httpx.Response) -> list[str]:
    """The BadRequest field violations of a transcoded google.rpc.Status JSON body."""
    for detail in response.json().get("details", []):
        if detail.get("@type", "").endswith("google.rpc.BadRequest"):
            return [v["field"] for v in detail.get("fieldViolations", [])]
    return []


def rich_status(err: grpc.RpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest fields) of a gRPC error, from its status details trailer."""
    reason, fields = "", []
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields = [v.field for v in bad.field_violations]
    return reason, fields
