"""Several keyframes per scene, through the mesh (issue 11): a 40 s single-shot video whose colour turns from
green to blue in its last seconds (a 6 s fade: no cut) gets a keyframe per 4 s, each embedded by CLIP; a search
by a frame of the blue end finds the scene by its last keyframe, and the result's thumbnail and match time point
there; a search by a green frame points at the green part.

A mesh of its own: CLIP on random weights is allowed to rank here (``CLIPMIND_ALLOW_RANDOM_WEIGHTS_IN_RANKING``;
the session's mesh keeps random weights out of ranking). Random weights do not know what blue is, but they map an
image to nearly the same vector as a nearly identical image, which is all an image query needs."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import cv2
import grpc
import httpx
import numpy as np
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.search.v1 import search_service_pb2 as search_pb
from clipmind.search.v1 import search_service_pb2_grpc as search_grpc

from services.launcher import Mesh
from tests.e2e.clients import authenticated_channel, bearer, grpc_upload, wait_ready, watch_job
from tests.e2e.conftest import MODEL_ENV, mesh_user_key, running_mesh

pytestmark = pytest.mark.e2e

# RGB. Green to blue: a fade through the hue wrap (blue to red via magenta) is cut by ContentDetector, whose hue
# difference does not wrap around (measured: a cut at 35.2 s of a 30-36 s blue-to-red fade).
GREEN, BLUE = (0x30, 0xA0, 0x40), (0x20, 0x40, 0xC0)
FADE_AT_S, FADE_S, LENGTH_S = 30.0, 6.0, 40.0  # green until 30 s, blue from 36 s


def make_fading_video(folder: Path) -> Path:
    video = folder / "green-to-blue.mp4"
    colour = "color=c=0x{:02x}{:02x}{:02x}:size=320x240:rate=25:duration={}"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", colour.format(*GREEN, FADE_AT_S + FADE_S),
         "-f", "lavfi", "-i", colour.format(*BLUE, LENGTH_S - FADE_AT_S),
         "-filter_complex", f"[0:v][1:v]xfade=transition=fade:duration={FADE_S}:offset={FADE_AT_S}[v]",
         "-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-t", str(LENGTH_S),
         "-movflags", "+faststart", str(video)],
        check=True)
    return video


def frame_at(video: Path, at_s: float) -> bytes:
    """The frame shown at ``at_s``, as a JPEG (what a user would search with)."""
    return subprocess.run(["ffmpeg", "-v", "error", "-ss", str(at_s), "-i", str(video), "-frames:v", "1",
                           "-f", "image2", "-c:v", "mjpeg", "-"], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def frames_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    env = {**MODEL_ENV, "CLIPMIND_ALLOW_RANDOM_WEIGHTS_IN_RANKING": "true"}
    with running_mesh(tmp_path_factory.mktemp("frames-mesh"), env) as launched:
        yield launched


@pytest.fixture(scope="module")
def viewer_key(frames_mesh: Mesh) -> str:
    return mesh_user_key(frames_mesh, "viewer@example.com")


@pytest.fixture(scope="module")
def frames_channel(frames_mesh: Mesh, viewer_key: str) -> Iterator[grpc.Channel]:
    channel = authenticated_channel(frames_mesh.endpoints.envoy_url.removeprefix("http://"), viewer_key)
    yield channel
    channel.close()


@pytest.fixture(scope="module")
def faded(tmp_path_factory: pytest.TempPathFactory, frames_channel: grpc.Channel, frames_mesh: Mesh) -> dict:
    folder = tmp_path_factory.mktemp("frames-media")
    path = make_fading_video(folder)
    uploaded = grpc_upload(frames_channel, path)
    watch_job(frames_channel, uploaded.job)
    video = wait_ready(frames_channel, uploaded.name)
    assert video.state == ingest_pb.Video.STATE_READY, video.failure_reason

    async def keyframes() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(frames_mesh.endpoints.database_url)
        try:
            return await conn.fetch(
                "SELECT k.idx, k.time_s, k.start_s, k.end_s, k.thumbnail_key, x.model FROM search.keyframes k "
                "LEFT JOIN search.visual_vectors x ON x.id = k.id WHERE k.video_id = $1 ORDER BY k.idx",
                video.name.removeprefix("videos/"))
        finally:
            await conn.close()

    return {"path": path, "video": video, "keyframes": asyncio.run(keyframes())}


def _search_by(channel: grpc.Channel, image: bytes) -> search_pb.SearchResult:
    stub = search_grpc.SearchServiceStub(channel)
    results = stub.Search(search_pb.SearchRequest(image=image, page_size=5), timeout=60).results
    assert len(results) == 1  # the one scene
    return results[0]


def _colour(client: httpx.Client, uri: str) -> np.ndarray:
    """Mean RGB of the JPEG at ``uri`` (served through Envoy)."""
    response = client.get(uri)
    assert response.status_code == 200 and response.content[:2] == b"\xff\xd8"
    image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    return np.asarray(image.reshape(-1, 3).mean(axis=0)[::-1])


def test_a_long_scene_gets_a_keyframe_every_few_seconds(faded: dict) -> None:
    video, frames = faded["video"], faded["keyframes"]
    assert video.scene_count == 1  # the fade is not a cut
    assert len(frames) >= 8
    assert frames[0]["start_s"] == 0 and frames[-1]["end_s"] == pytest.approx(video.duration_seconds, abs=0.05)
    for before, after in pairwise(frames):
        assert before["end_s"] == pytest.approx(after["start_s"])  # the frames' stretches tile the scene
    for frame in frames:
        assert frame["end_s"] - frame["start_s"] <= 6.0 + 1e-6  # at most 1.5 x the 4 s interval
        assert frame["start_s"] <= frame["time_s"] <= frame["end_s"]
        assert frame["model"] == "clip/ViT-B-32@random-seed0"  # every frame embedded


def test_a_search_by_the_blue_end_points_at_the_last_keyframe(faded: dict, frames_channel: grpc.Channel,
                                                             frames_mesh: Mesh, viewer_key: str) -> None:
    last = faded["keyframes"][-1]
    hit = _search_by(frames_channel, frame_at(faded["path"], LENGTH_S - 1.5))
    assert search_pb.SIGNAL_VISUAL in hit.matched_signals and hit.visual_score > 0.9
    assert (hit.match_start_seconds, hit.match_end_seconds) == pytest.approx((last["start_s"], last["end_s"]))
    assert hit.match_start_seconds >= FADE_AT_S + FADE_S
    assert urlsplit(hit.match_thumbnail_uri).path.endswith(last["thumbnail_key"])  # (the URL is signed)
    # the clip's own keyframe is its middle one
    assert urlsplit(hit.match_thumbnail_uri).path != urlsplit(hit.clip.thumbnail_uri).path
    with httpx.Client(base_url=frames_mesh.endpoints.envoy_url, timeout=30, headers=bearer(viewer_key)) as client:
        late, middle = _colour(client, hit.match_thumbnail_uri), _colour(client, hit.clip.thumbnail_uri)
    assert np.abs(late - BLUE).max() < 30, late
    assert np.abs(middle - GREEN).max() < 30, middle


def test_a_search_by_a_green_frame_points_at_the_green_part(faded: dict, frames_channel: grpc.Channel,
                                                          frames_mesh: Mesh, viewer_key: str) -> None:
    hit = _search_by(frames_channel, frame_at(faded["path"], 5.0))
    assert hit.match_end_seconds <= FADE_AT_S + 2.05  # a green frame's stretch (the fade has barely begun by 32 s)
    with httpx.Client(base_url=frames_mesh.endpoints.envoy_url, timeout=30, headers=bearer(viewer_key)) as client:
        early = _colour(client, hit.match_thumbnail_uri)
    assert np.abs(early - GREEN).max() < 30, early
