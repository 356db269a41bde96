"""Bounded input through the real mesh: over REST (Envoy's transcoder) and gRPC, a hostile sidecar is
refused fast and leaves the upload to be completed again, an upload over 10 GB is refused as soon as it
says so or passes it, and over-long fields are refused naming the field. Nothing is stored for any."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc

from services.media.subtitles import Cue
from tests.e2e.clients import authenticated_channel, error_fields, error_reason, rich_status
from tests.media import SceneSpec, make_scene_video, srt_text

pytestmark = pytest.mark.e2e

TEN_GB = 10_000_000_000
FIVE_MIB = 5 * 1024 * 1024
HOSTILE_SRT = ("1\n00:00:01,000 --> 00:00:02,000\n" + "<a" * FIVE_MIB)[:FIVE_MIB]
GOOD_SRT = srt_text([Cue(0.2, 1.5, "a good sidecar")])


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene_video(tmp_path_factory.mktemp("limits") / "clip.mp4", (SceneSpec(2.0, "testsrc2"),),
                            audio=False)


def _stored_videos(blob_dir: Path) -> set[str]:
    videos = blob_dir / "videos"
    return {p.name for p in videos.iterdir()} if videos.exists() else set()


def _staged_upload(rest: httpx.Client, path: Path) -> str:
    """An upload holding all of ``path``'s bytes, not completed; returns its name."""
    data = path.read_bytes()
    created = rest.post("/v1/uploads", json={"filename": path.name, "contentType": "video/mp4",
                                             "sizeBytes": str(len(data))})
    assert created.status_code == 200, created.text
    name = str(created.json()["name"])
    put = rest.put(f"/v1/{name}:write", params={"offset": 0}, content=data,
                   headers={"content-type": "application/octet-stream"})
    assert put.status_code == 200, put.text
    return name


def test_hostile_sidecar_over_rest_is_refused_fast_and_the_upload_completes_later(
    rest: httpx.Client, clip: Path, blob_dir: Path
) -> None:
    name = _staged_upload(rest, clip)
    before = _stored_videos(blob_dir)
    body: dict[str, Any] = {"title": "clip", "sidecarSubtitles": {"filename": "evil.srt", "text": HOSTILE_SRT}}

    started = time.perf_counter()
    refused = rest.post(f"/v1/{name}:complete", json=body, timeout=30)
    elapsed = time.perf_counter() - started
    assert refused.status_code == 400, refused.text[:500]
    assert error_reason(refused) == "INVALID_SUBTITLES" and error_fields(refused) == ["sidecar_subtitles"]
    assert elapsed < 2.0, f"refusing a hostile 5 MiB sidecar took {elapsed:.2f} s"

    upload = rest.get(f"/v1/{name}").json()
    assert upload["state"] == "STATE_ACTIVE" and int(upload["committedSize"]) == clip.stat().st_size
    assert _stored_videos(blob_dir) == before

    done = rest.post(f"/v1/{name}:complete",
                     json={"title": "clip", "sidecarSubtitles": {"filename": "good.srt", "text": GOOD_SRT}})
    assert done.status_code == 200, done.text
    assert rest.get(f"/v1/{name}").json()["state"] == "STATE_COMPLETED"


def test_over_ten_gb_is_refused_over_rest(rest: httpx.Client, blob_dir: Path) -> None:
    before = _stored_videos(blob_dir)
    too_big = rest.post("/v1/uploads", json={"filename": "huge.mp4", "sizeBytes": str(TEN_GB + 1)})
    assert too_big.status_code == 400, too_big.text
    assert error_reason(too_big) == "UPLOAD_TOO_LARGE" and error_fields(too_big) == ["upload.size_bytes"]

    created = rest.post("/v1/uploads", json={"filename": "huge.mp4"})  # size not declared
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    past = rest.put(f"/v1/{name}:write", params={"offset": TEN_GB - 1}, content=b"\0\0",
                    headers={"content-type": "application/octet-stream"})
    assert past.status_code == 400, past.text
    assert error_reason(past) == "UPLOAD_TOO_LARGE"
    assert int(rest.get(f"/v1/{name}").json().get("committedSize", 0)) == 0
    assert _stored_videos(blob_dir) == before


def test_over_long_fields_over_rest_name_the_field(rest: httpx.Client, clip: Path) -> None:
    long_name = rest.post("/v1/uploads", json={"filename": "n" * 256 + ".mp4"})
    assert long_name.status_code == 400 and error_fields(long_name) == ["upload.filename"]
    created = rest.post("/v1/uploads", json={"filename": "../../etc/clip.mp4"})
    assert created.json()["filename"] == "clip.mp4"

    name = _staged_upload(rest, clip)
    long_title = rest.post(f"/v1/{name}:complete", json={"title": "t" * 513})
    assert long_title.status_code == 400, long_title.text
    assert error_reason(long_title) == "VALUE_TOO_LONG" and error_fields(long_title) == ["title"]
    assert rest.get(f"/v1/{name}").json()["state"] == "STATE_ACTIVE"  # the upload is kept
    video = rest.post(f"/v1/{name}:complete", json={"title": "t" * 512})
    assert video.status_code == 200, video.text

    update = rest.patch(f"/v1/{video.json()['name']}", json={"description": "d" * 10_001})
    assert update.status_code == 400 and error_fields(update) == ["video.description"]


def test_grpc_stream_limits_are_checked_on_the_metadata(channel: grpc.Channel, blob_dir: Path) -> None:
    stub = ingest_grpc.IngestServiceStub(channel)
    before = _stored_videos(blob_dir)

    def stream(meta: ingest_pb.UploadMetadata) -> Any:
        yield ingest_pb.UploadVideoRequest(metadata=meta)
        for _ in range(64):  # the server refuses on the metadata, without reading these
            yield ingest_pb.UploadVideoRequest(chunk=bytes(1024 * 1024))

    cases = [
        (ingest_pb.UploadMetadata(filename="huge.mp4", size_bytes=TEN_GB + 1), "UPLOAD_TOO_LARGE",
         "metadata.size_bytes"),
        (ingest_pb.UploadMetadata(filename="clip.mp4", title="t" * 513), "VALUE_TOO_LONG", "metadata.title"),
        (ingest_pb.UploadMetadata(filename="clip\x01.mp4"), "INVALID_CHARACTERS", "metadata.filename"),
    ]
    hostile = ingest_pb.UploadMetadata(filename="clip.mp4")
    hostile.sidecar_subtitles.text = HOSTILE_SRT
    cases.append((hostile, "INVALID_SUBTITLES", "sidecar_subtitles"))
    for meta, reason, field in cases:
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadVideo(stream(meta), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert rich_status(err.value) == (reason, [field])
        assert time.perf_counter() - started < 2.0
    assert _stored_videos(blob_dir) == before
    staging = blob_dir.parent / "staging"
    assert not [p for p in staging.iterdir() if p.name.startswith("stream-")]


def test_an_undeclared_grpc_stream_of_ten_gb_and_one_byte_is_refused_and_nothing_is_stored(  # type: ignore[no-untyped-def]
    endpoints, credentials, blob_dir: Path
) -> None:
    """10 GB + 1 byte, generated as it is sent (no file behind it), with no declared size: the service
    counts the bytes and refuses the stream at the one that passes the limit, and keeps none of it."""
    before = _stored_videos(blob_dir)
    piece = bytes(8 * 1024 * 1024)
    sent = 0

    def stream() -> Any:
        nonlocal sent
        yield ingest_pb.UploadVideoRequest(metadata=ingest_pb.UploadMetadata(filename="endless.mp4"))
        while sent <= TEN_GB:
            chunk = piece if TEN_GB + 1 - sent >= len(piece) else piece[: TEN_GB + 1 - sent]
            sent += len(chunk)
            yield ingest_pb.UploadVideoRequest(chunk=chunk)

    started = time.monotonic()
    with authenticated_channel(endpoints.ingest, credentials.user) as ch:
        with pytest.raises(grpc.RpcError) as err:
            ingest_grpc.IngestServiceStub(ch).UploadVideo(stream(), timeout=600)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert rich_status(err.value) == ("UPLOAD_TOO_LARGE", ["chunk"])
    assert sent > TEN_GB, "refused before the limit was passed"
    print(f"10 GB + 1 byte streamed and refused in {time.monotonic() - started:.1f} s")
    assert _stored_videos(blob_dir) == before
    staging = blob_dir.parent / "staging"
    assert not [p for p in staging.iterdir() if p.name.startswith("stream-")], "the staged bytes were kept"
