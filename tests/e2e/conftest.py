"""The mesh as `clipmind up` starts it (PostgreSQL, Redis, Triton, the four services, the worker and
Envoy), once per test session on free ports in a temporary state directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from services.launcher import Mesh, MeshConfig, MeshPorts
from tests.e2e.clients import rest_upload, wait_ready, watch_job
from tests.e2e.test_skeleton_flow import CUES, SCENES
from tests.media import make_scene_video

# CLIP and Whisper weights cannot be downloaded here: the e2e mesh runs them on explicitly requested,
# seeded random weights. They are "degraded": their vectors and transcripts are stored, but they must
# not change search ranking (the paraphrase tests below would fail if they did).
MODEL_ENV = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_WHISPER_WEIGHTS": "random", "CLIPMIND_MODEL_SEED": "0"}


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    patch = pytest.MonkeyPatch()
    for key, value in MODEL_ENV.items():
        patch.setenv(key, value)  # the launcher hands CLIPMIND_* to Triton from its own environment
    launched = Mesh(MeshConfig(state_dir=tmp_path_factory.mktemp("mesh"), ports=MeshPorts.free(),
                               extra_env=MODEL_ENV))
    launched.start()
    try:
        yield launched
    finally:
        launched.stop()
        patch.undo()


@pytest.fixture(scope="session")
def endpoints(mesh: Mesh):  # type: ignore[no-untyped-def]
    return mesh.endpoints


@pytest.fixture(scope="session")
def blob_dir(endpoints) -> Path:  # type: ignore[no-untyped-def]
    return Path(endpoints.blob_dir)


@pytest.fixture(scope="session")
def rest(endpoints) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=endpoints.envoy_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def channel_factory(endpoints) -> Iterator[Callable[[], grpc.Channel]]:  # type: ignore[no-untyped-def]
    """gRPC channels to Envoy's single port (native gRPC passes through it)."""
    opened: list[grpc.Channel] = []

    def open_channel() -> grpc.Channel:
        target = endpoints.envoy_url.removeprefix("http://")
        ch = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
        opened.append(ch)
        return ch

    yield open_channel
    for ch in opened:
        ch.close()


@pytest.fixture(scope="session")
def channel(channel_factory: Callable[[], grpc.Channel]) -> grpc.Channel:
    return channel_factory()


@pytest.fixture(scope="session")
def processed_video(tmp_path_factory: pytest.TempPathFactory, rest: httpx.Client, channel: grpc.Channel) -> dict:
    """The four-scene video with embedded subtitles, uploaded over REST and processed to the end."""
    path = make_scene_video(tmp_path_factory.mktemp("media") / "four-scenes.mp4", SCENES, CUES)
    response = rest_upload(rest, path, title="Four scenes")
    assert response.status_code == 200, response.text
    video = response.json()
    events = watch_job(channel, video["job"])
    return {"video": video, "events": events, "final": wait_ready(channel, video["name"])}
