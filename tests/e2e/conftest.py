"""The mesh as `clipmind up` starts it (PostgreSQL, Redis, Triton, the four services, the worker and
Envoy), once per test session on free ports in a temporary state directory."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from services.launcher import EdgePolicy, Mesh, MeshConfig, MeshPorts
from services.launcher.credentials import admin_api_key, user_api_key
from tests.e2e.clients import authenticated_channel, bearer, rest_upload, wait_ready, watch_job
from tests.e2e.test_skeleton_flow import CUES, SCENES
from tests.media import make_scene_video

# CLIP and Whisper weights cannot be downloaded here: the e2e mesh runs them on explicitly requested,
# seeded random weights. They are "degraded": their vectors and transcripts are stored, but they must
# not change search ranking (the paraphrase tests below would fail if they did).
# A public name besides localhost's, and one web origin allowed to call the API from a browser.
EDGE = EdgePolicy(allowed_hosts=("clipmind.test",), cors_origins=("https://app.example.com",))
MODEL_ENV = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_WHISPER_WEIGHTS": "random", "CLIPMIND_MODEL_SEED": "0"}
# The suite acts as a few users doing far more than a person would in an hour (fifty uploads at once, polling):
# the hourly request and upload limits are raised for it. Searches keep the default (100 a minute), which
# tests/e2e/test_rate_limits.py checks through Envoy with a user of its own.
LIMITS_ENV = {"CLIPMIND_RATE_LIMIT_REQUESTS_PER_HOUR": "1000000", "CLIPMIND_RATE_LIMIT_UPLOADS_PER_HOUR": "100000"}


@contextlib.contextmanager
def running_mesh(state_dir: Path, model_env: dict[str, str], **config: Any) -> Iterator[Mesh]:
    """A mesh on free ports with these model settings (and the suite's raised limits), stopped on exit."""
    patch = pytest.MonkeyPatch()
    for key, value in model_env.items():
        patch.setenv(key, value)  # the launcher hands CLIPMIND_* to Triton from its own environment
    launched = Mesh(MeshConfig(state_dir=state_dir, ports=MeshPorts.free(), extra_env={**model_env, **LIMITS_ENV},
                               **config))
    launched.start()
    try:
        yield launched
    finally:
        launched.stop()
        patch.undo()


def mesh_user_key(mesh: Mesh, email: str) -> str:
    """An API key of the user ``email`` on ``mesh`` (made by its first administrator), for a module's own mesh."""
    url = mesh.endpoints.envoy_url
    return user_api_key(url, admin_api_key(url, mesh.admin_password_path), email)


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("mesh"), MODEL_ENV, edge=EDGE) as launched:
        yield launched


@pytest.fixture(scope="session")
def endpoints(mesh: Mesh):  # type: ignore[no-untyped-def]
    return mesh.endpoints


@pytest.fixture(scope="session")
def blob_dir(endpoints) -> Path:  # type: ignore[no-untyped-def]
    return Path(endpoints.blob_dir)


@dataclass(frozen=True)
class Credentials:
    """API keys made once per mesh: the first administrator's and an ordinary user's (whom the tests act as)."""

    admin: str
    user: str


@pytest.fixture(scope="session")
def credentials(mesh: Mesh) -> Credentials:
    admin = admin_api_key(mesh.endpoints.envoy_url, mesh.admin_password_path)
    return Credentials(admin=admin, user=user_api_key(mesh.endpoints.envoy_url, admin, "tester@example.com"))


@pytest.fixture(scope="session")
def rest(endpoints, credentials: Credentials) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """REST through Envoy as the ordinary user."""
    with httpx.Client(base_url=endpoints.envoy_url, timeout=120, headers=bearer(credentials.user)) as client:
        yield client


@pytest.fixture(scope="session")
def user_id(rest: httpx.Client) -> uuid.UUID:
    """The id of the ordinary user the suite acts as (the owner of what it uploads)."""
    return uuid.UUID(rest.get("/v1/users:me").json()["name"].removeprefix("users/"))


@pytest.fixture(scope="session")
def anonymous(endpoints) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """REST through Envoy without any credential."""
    with httpx.Client(base_url=endpoints.envoy_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def channel_factory(endpoints, credentials: Credentials) -> Iterator[Callable[[], grpc.Channel]]:  # type: ignore[no-untyped-def]
    """gRPC channels to Envoy's single port (native gRPC passes through it), as the ordinary user."""
    opened: list[grpc.Channel] = []

    def open_channel() -> grpc.Channel:
        ch = authenticated_channel(endpoints.envoy_url.removeprefix("http://"), credentials.user)
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
