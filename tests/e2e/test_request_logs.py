"""Log lines of one request share its request id across processes (services/common/logs.py).

A REST call through Envoy with the client's own ``x-request-id`` and ``traceparent``, made with a brand-new API
key: ingest serves ListVideos, and authenticating the key makes it ask identity (AuthenticateApiKey, an internal
call) first. Both processes' log files (``<state>/logs/<name>.log``) must hold JSON lines with that request id
and trace id, each naming its own process as ``service``."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

import httpx
import pytest

from services.launcher import Mesh
from services.launcher.credentials import user_api_key
from tests.e2e.clients import bearer
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.e2e

PROCESSES = ("ingest", "identity", "pipeline", "search", "analytics", "worker")


def json_lines(mesh: Mesh, process: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``process`` (other lines, e.g. the supervisor's or a native library's, skipped)."""
    lines = []
    for text in mesh.log_path(process).read_text(errors="replace").splitlines():
        if text.startswith("{"):
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                continue  # a line cut short while being written
    return lines


def test_log_lines_of_one_request_share_its_request_id_across_processes(mesh: Mesh, endpoints, credentials) -> None:  # type: ignore[no-untyped-def]
    # A key nobody used yet: no process has its owner cached, so ingest has to ask identity.
    key = user_api_key(endpoints.envoy_url, credentials.admin, f"logs-{uuid.uuid4().hex[:12]}@example.com")
    request_id = f"logs-{uuid.uuid4().hex}"
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = {**bearer(key), "x-request-id": request_id, "traceparent": f"00-{trace_id}-{span_id}-01"}
    with httpx.Client(base_url=endpoints.envoy_url, timeout=60) as client:
        response = client.get("/v1/videos", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers.get("x-request-id") == request_id  # Envoy kept the client's id and echoes it

    def lines_of_the_request() -> dict[str, list[dict[str, Any]]]:
        return {p: [line for line in json_lines(mesh, p) if line.get("request_id") == request_id] for p in PROCESSES}

    deadline = time.monotonic() + 10
    found = lines_of_the_request()
    while not (found["ingest"] and found["identity"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = lines_of_the_request()
    assert found["ingest"] and found["identity"], {p: len(lines) for p, lines in found.items()}
    for process, lines in found.items():
        for line in lines:
            assert line["service"] == process, line
            assert line["trace_id"] == trace_id, line
            assert line["time"].endswith("Z") and line["level"], line

    # One access line per call, in the process that served it.
    [served] = [line for line in found["ingest"]
                if line.get("method") == "/clipmind.ingest.v1.IngestService/ListVideos"]
    assert served["code"] == "OK" and served["duration_ms"] >= 0 and served["logger"] == "clipmind.access"
    assert served["span_id"] == span_id and served["principal"].startswith("users/")
    [asked] = [line for line in found["identity"]
               if line.get("method") == "/clipmind.identity.internal.v1.IdentityInternalService/AuthenticateApiKey"]
    assert asked["code"] == "OK" and asked["caller"] == "ingest"
    assert asked["principal"] == f"users/{uuid.UUID(int=0)}"  # the system identity


def test_facts_a_request_commits_are_delivered_under_its_request_id(mesh: Mesh, endpoints, credentials,  # type: ignore[no-untyped-def]
                                                                     tmp_path) -> None:
    """Ingest's outbox keeps the request id of the upload that committed its facts: the pipeline's SubmitVideoJob,
    search's UpsertVideoFacts and analytics' RecordUsage, delivered after the upload answered, log it too. (A user
    of its own: the video's processing must not touch the shared user's search cache.)"""
    key = user_api_key(endpoints.envoy_url, credentials.admin, f"logged-{uuid.uuid4().hex[:8]}@example.com")
    rest = httpx.Client(base_url=endpoints.envoy_url, timeout=60, headers=bearer(key))
    request_id = f"upload-{uuid.uuid4().hex}"
    path = make_scene_video(tmp_path / "logged.mp4", (SceneSpec(2.0, "testsrc2"),))
    created = rest.post("/v1/uploads", json={"filename": path.name, "contentType": "video/mp4",
                                             "sizeBytes": str(path.stat().st_size)})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    written = rest.put(f"/v1/{name}:write", params={"offset": 0}, content=path.read_bytes(),
                       headers={"content-type": "application/octet-stream"})
    assert written.status_code == 200, written.text
    completed = rest.post(f"/v1/{name}:complete", json={"title": "logged"}, headers={"x-request-id": request_id})
    assert completed.status_code == 200, completed.text
    wanted = {"pipeline": "/clipmind.pipeline.internal.v1.PipelineInternalService/SubmitVideoJob",
              "search": "/clipmind.search.internal.v1.SearchInternalService/UpsertVideoFacts",
              "analytics": "/clipmind.analytics.internal.v1.AnalyticsInternalService/RecordUsage"}

    def delivered() -> dict[str, bool]:
        return {p: any(line.get("request_id") == request_id and line.get("method") == method
                       and line.get("caller") == "ingest" for line in json_lines(mesh, p))
                for p, method in wanted.items()}

    deadline = time.monotonic() + 20
    while not all(delivered().values()) and time.monotonic() < deadline:
        time.sleep(0.3)
    rest.close()
    assert all(delivered().values()), delivered()


def test_every_service_process_logs_json_lines_naming_itself(mesh: Mesh) -> None:
    for process in PROCESSES:
        lines = json_lines(mesh, process)
        assert lines, f"no JSON lines in {mesh.log_path(process)}"
        assert {line["service"] for line in lines} == {process}
