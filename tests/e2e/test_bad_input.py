"""Bad input is refused with INVALID_ARGUMENT (HTTP 400 through Envoy), a reason and the field, and
nothing is stored for it; unknown resources are NOT_FOUND (HTTP 404)."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from clipmind.search.v1 import search_service_pb2 as search_pb
from clipmind.search.v1 import search_service_pb2_grpc as search_grpc

from tests.e2e.clients import error_reason, grpc_upload, rest_upload, rich_status
from tests.media import make_empty_file, make_scene_video, make_text_file, make_truncated_mp4

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad")
    good = make_scene_video(tmp / "good.mp4")
    moov_end = tmp / "moov-end.mp4"
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(good), "-c", "copy", str(moov_end)], check=True)
    return {
        "text": make_text_file(tmp / "notes.mp4"),
        "empty": make_empty_file(tmp / "empty.mp4"),
        "truncated": make_truncated_mp4(moov_end, tmp / "truncated.mp4"),
        "truncated-faststart": make_truncated_mp4(good, tmp / "truncated-faststart.mp4"),
    }


def _stored_videos(blob_dir: Path) -> set[str]:
    videos = blob_dir / "videos"
    return {p.name for p in videos.iterdir()} if videos.exists() else set()


def _video_count(channel: grpc.Channel) -> int:
    stub = ingest_grpc.IngestServiceStub(channel)
    return stub.ListVideos(ingest_pb.ListVideosRequest(page_size=1), timeout=10).total_size


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "truncated-faststart"])
def test_bad_upload_over_rest_is_400_and_stores_nothing(
    kind: str, bad_files: dict[str, Path], rest: httpx.Client, channel: grpc.Channel, blob_dir: Path
) -> None:
    before_blobs, before_count = _stored_videos(blob_dir), _video_count(channel)
    response = rest_upload(rest, bad_files[kind])
    assert response.status_code == 400, response.text
    assert error_reason(response) in {"EMPTY_FILE", "NOT_A_VIDEO", "UNREADABLE_MEDIA", "TRUNCATED_MEDIA"}
    assert response.json()["message"]
    assert _stored_videos(blob_dir) == before_blobs
    assert _video_count(channel) == before_count


@pytest.mark.parametrize("kind", ["text", "empty", "truncated"])
def test_bad_upload_over_grpc_is_invalid_argument_with_field(
    kind: str, bad_files: dict[str, Path], channel: grpc.Channel, blob_dir: Path
) -> None:
    before_blobs, before_count = _stored_videos(blob_dir), _video_count(channel)
    with pytest.raises(grpc.RpcError) as err:
        grpc_upload(channel, bad_files[kind])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, fields = rich_status(err.value)
    assert reason and fields == ["video"]
    assert _stored_videos(blob_dir) == before_blobs
    assert _video_count(channel) == before_count
    staging = blob_dir.parent / "staging"
    assert not [p for p in staging.iterdir() if p.name.startswith("stream-")]


def test_stream_without_metadata_first_is_refused(channel: grpc.Channel) -> None:
    stub = ingest_grpc.IngestServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadVideo(iter([ingest_pb.UploadVideoRequest(chunk=b"abc")]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_status(err.value) == ("METADATA_FIRST", ["metadata"])


def test_unknown_video_is_not_found(rest: httpx.Client, channel: grpc.Channel) -> None:
    missing = "videos/00000000-0000-4000-8000-000000000000"
    response = rest.get(f"/v1/{missing}")
    assert response.status_code == 404
    assert error_reason(response) == "VIDEO_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as err:
        ingest_grpc.IngestServiceStub(channel).GetVideo(ingest_pb.GetVideoRequest(name=missing), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_malformed_name_and_empty_query_are_invalid(rest: httpx.Client, channel: grpc.Channel) -> None:
    response = rest.get("/v1/videos/not-a-uuid")
    assert response.status_code == 400 and error_reason(response) == "INVALID_NAME"
    with pytest.raises(grpc.RpcError) as err:
        search_grpc.SearchServiceStub(channel).Search(search_pb.SearchRequest(query="  "), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_status(err.value) == ("EMPTY_QUERY", ["query"])


def test_unimplemented_rpcs_say_so(rest: httpx.Client) -> None:
    response = rest.post("/v1/videos:import", json={"uri": "https://example.com/a.mp4"})  # ImportVideo: issue 14
    assert response.status_code == 501 and error_reason(response) == "NOT_IMPLEMENTED"
