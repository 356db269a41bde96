"""Priorities through Envoy's REST API (issue 13): a user may ask for batch (or standard) processing but not
high — refused with PERMISSION_DENIED naming the field, the upload kept to be completed again —; the job carries
the priority it got; the queue figures are an administrator's (GetQueueStats)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb

from services.launcher import Mesh
from tests.e2e.clients import authenticated_channel, bearer, error_reason, wait_ready
from tests.e2e.conftest import mesh_user_key
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def uploader(mesh: Mesh) -> Iterator[tuple[httpx.Client, grpc.Channel]]:
    """REST and gRPC as a user of this module's own (their uploads leave the shared user's search cache alone)."""
    key = mesh_user_key(mesh, f"batch-{uuid.uuid4().hex[:8]}@example.com")
    target = mesh.endpoints.envoy_url
    with httpx.Client(base_url=target, timeout=60, headers=bearer(key)) as rest, \
            authenticated_channel(target.removeprefix("http://"), key) as channel:
        yield rest, channel


def test_a_user_asks_for_batch_not_high_and_the_job_carries_it(uploader, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rest, channel = uploader
    path = make_scene_video(tmp_path / "batch.mp4", (SceneSpec(2.0, "testsrc2"),))
    created = rest.post("/v1/uploads", json={"filename": path.name, "contentType": "video/mp4",
                                             "sizeBytes": str(path.stat().st_size)})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    written = rest.put(f"/v1/{name}:write", params={"offset": 0}, content=path.read_bytes(),
                       headers={"content-type": "application/octet-stream"})
    assert written.status_code == 200, written.text

    refused = rest.post(f"/v1/{name}:complete", json={"title": "urgent", "priority": "PRIORITY_HIGH"})
    assert refused.status_code == 403 and error_reason(refused) == "PRIORITY_NOT_ALLOWED", refused.text
    assert rest.get(f"/v1/{name}").json()["state"] == "STATE_ACTIVE"  # kept: complete it again

    completed = rest.post(f"/v1/{name}:complete", json={"title": "overnight", "priority": "PRIORITY_BATCH"})
    assert completed.status_code == 200, completed.text
    video = completed.json()
    job = rest.get(f"/v1/{video['job']}").json()
    assert job["priority"] == "PRIORITY_BATCH"
    assert wait_ready(channel, video["name"]).state == ingest_pb.Video.STATE_READY  # batch work runs, nothing ahead


def test_queue_figures_are_for_administrators(rest: httpx.Client, credentials) -> None:  # type: ignore[no-untyped-def]
    assert rest.get("/v1/queueStats").status_code == 403
    with httpx.Client(base_url=str(rest.base_url), timeout=60, headers=bearer(credentials.admin)) as admin:
        stats = admin.get("/v1/queueStats")
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert [q["name"] for q in body["queues"]] == ["clipmind:queue:default"]
    assert body["queues"][0]["priorities"] == ["PRIORITY_HIGH", "PRIORITY_STANDARD", "PRIORITY_BATCH"]
    assert [j["priority"] for j in body["jobs"]] == ["PRIORITY_HIGH", "PRIORITY_STANDARD", "PRIORITY_BATCH"]
