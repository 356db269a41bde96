"""Compilations through Envoy's REST API (issue 13): spans of the processed video joined with a crossfade and a
title card into an MP4 by a worker job (followed with WatchJob), played through its signed link; another user
sees none of it and cannot use the video; deleting the compilation makes its link stop working."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest

from services.launcher import Mesh
from services.launcher.credentials import user_api_key
from tests.e2e.clients import bearer, error_reason, watch_job
from tests.e2e.conftest import Credentials

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stranger(mesh: Mesh, credentials: Credentials) -> Iterator[httpx.Client]:
    key = user_api_key(mesh.endpoints.envoy_url, credentials.admin, f"compiler-{uuid.uuid4().hex[:8]}@example.com")
    with httpx.Client(base_url=mesh.endpoints.envoy_url, timeout=60, headers=bearer(key)) as client:
        yield client


def test_a_compilation_is_rendered_played_hidden_from_others_and_deleted(
        processed_video: dict, rest: httpx.Client, channel: grpc.Channel, stranger: httpx.Client) -> None:
    video = processed_video["video"]["name"]
    request = {"clips": [{"video": video, "startSeconds": 1, "endSeconds": 4},
                         {"video": video, "startSeconds": 12, "endSeconds": 15}],
               "options": {"crossfadeSeconds": 0.5, "titleText": "Highlights", "titleSeconds": 1.5,
                           "width": 320, "height": 240}}
    created = rest.post("/v1/compilations", json=request)
    assert created.status_code == 200, created.text
    compilation = created.json()
    assert compilation["state"] in ("STATE_PENDING", "STATE_RUNNING") and compilation["job"].startswith("jobs/")
    job = rest.get(f"/v1/{compilation['job']}").json()
    assert job["compilation"] == compilation["name"] and not job.get("video")

    events = watch_job(channel, compilation["job"], timeout=300)
    assert events[-1].job_state == 3, events[-1]  # SUCCEEDED
    assert any(e.stage == 7 for e in events)  # STAGE_RENDER
    done = rest.get(f"/v1/{compilation['name']}").json()
    assert done["state"] == "STATE_SUCCEEDED" and done["renderMethod"] == "filter_graph"
    assert float(done["durationSeconds"]) == pytest.approx(1.5 + 3 + 3 - 0.5, abs=0.1)
    played = rest.get(done["outputUri"])
    assert played.status_code == 200 and played.content[4:8] == b"ftyp"
    assert int(done["sizeBytes"]) == len(played.content)
    assert compilation["name"] in [c["name"] for c in rest.get("/v1/compilations").json()["compilations"]]

    # Another user: not their compilation, not their video.
    assert stranger.get(f"/v1/{compilation['name']}").status_code == 404
    assert compilation["name"] not in [c["name"] for c in stranger.get("/v1/compilations").json().get(
        "compilations", [])]
    theirs = stranger.post("/v1/compilations", json={"clips": request["clips"]})
    assert theirs.status_code == 404 and error_reason(theirs) == "VIDEO_NOT_FOUND"
    refused = rest.post("/v1/compilations", json={"clips": [{"video": video, "startSeconds": 5, "endSeconds": 4}]})
    assert refused.status_code == 400

    assert rest.delete(f"/v1/{compilation['name']}").status_code == 200
    assert rest.get(f"/v1/{compilation['name']}").status_code == 404
    assert rest.get(done["outputUri"]).status_code == 404  # the link stops working


def test_a_compilation_of_a_searchs_top_results_and_of_trimmed_clips(
        processed_video: dict, rest: httpx.Client, stranger: httpx.Client) -> None:
    found = rest.post("/v1/clips:search", json={"query": "quarterly revenue", "pageSize": 3}).json()
    ranked = [r["clip"] for r in found["results"]]
    assert len(ranked) >= 2

    def create(client: httpx.Client, params: dict | None = None, body: dict | None = None) -> httpx.Response:
        deadline = time.monotonic() + 10  # the search reaches the log through the search service's outbox
        while True:
            response = client.post("/v1/compilations", params=params, json=body or {})
            if response.status_code != 404 or time.monotonic() > deadline or client is stranger:
                return response
            time.sleep(0.2)

    top = create(rest, {"searchId": found["searchId"], "topResultCount": 2})
    assert top.status_code == 200, top.text
    assert [c["clip"] for c in top.json()["clips"]] == [c["name"] for c in ranked[:2]]
    assert create(stranger, {"searchId": found["searchId"]}).status_code == 404  # not their search

    first = ranked[0]
    trimmed = create(rest, body={"clips": [{"clip": first["name"], "trimStartSeconds": 0.5, "trimEndSeconds": 1}]})
    assert trimmed.status_code == 200, trimmed.text
    [span] = trimmed.json()["clips"]
    assert span["startSeconds"] == pytest.approx(float(first.get("startSeconds", 0)) + 0.5)
    assert span["endSeconds"] == pytest.approx(float(first["endSeconds"]) - 1)
    for made in (top.json(), trimmed.json()):
        assert rest.delete(f"/v1/{made['name']}").status_code == 200
