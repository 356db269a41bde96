"""Search analytics through Envoy's REST API as two users (issue 12): searches with and without results,
impressions and a click on a known rank; GetSearchStats shows the exact counts, zero-result rate, CTR and mean
reciprocal rank of each user's own searches; one user never sees the other's queries; an administrator sees
both. The searches reach analytics through the search service's outbox, so reports are read until they have
arrived (a few hundred milliseconds). GetUsage: a new user's upload, processing, searches and deletion, as ingest's
and the pipeline's outboxes report them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.launcher import Mesh
from services.launcher.credentials import user_api_key
from tests.e2e.clients import bearer, rest_upload
from tests.e2e.conftest import Credentials
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def other(mesh: Mesh, credentials: Credentials) -> Iterator[httpx.Client]:
    """REST as a second ordinary user, who owns no videos."""
    key = user_api_key(mesh.endpoints.envoy_url, credentials.admin, f"analyst-{uuid.uuid4().hex[:8]}@example.com")
    with httpx.Client(base_url=mesh.endpoints.envoy_url, timeout=60, headers=bearer(key)) as client:
        yield client


@pytest.fixture(scope="module")
def admin(mesh: Mesh, credentials: Credentials) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.endpoints.envoy_url, timeout=60, headers=bearer(credentials.admin)) as client:
        yield client


def _search(client: httpx.Client, query: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/clips:search", json={"query": query, "pageSize": 5, **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _interact(client: httpx.Client, search_id: str, clip: str, kind: str, request_id: str = "",
              **fields: Any) -> httpx.Response:
    params = {"requestId": request_id} if request_id else None
    return client.post("/v1/interactions", params=params,
                       json={"searchId": search_id, "clip": clip, "type": kind, **fields})


def _eventually(read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        got = read()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_two_users_stats_clicks_and_popular_queries(processed_video: dict, rest: httpx.Client,
                                                     other: httpx.Client, admin: httpx.Client) -> None:
    since = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    window = {"startTime": since}
    found = _search(rest, "Dog   jumping into the water")
    assert len(found["results"]) >= 2
    clips = [r["clip"]["name"] for r in found["results"]]
    nothing = _search(rest, "dog jumping into the water", filter={"minDurationSeconds": 100000})
    assert not nothing.get("results")
    theirs = _search(other, "quarterly revenue")  # the other user owns no videos
    assert not theirs.get("results")

    for clip in clips:  # the page shown, the second result clicked (rank 2), twice with one request id
        assert _interact(rest, found["searchId"], clip, "TYPE_IMPRESSION").status_code == 200
    for _ in range(2):
        click = _interact(rest, found["searchId"], clips[1], "TYPE_CLICK", request_id="e2e-click-1")
        assert click.status_code == 200, click.text
        assert click.json()["rank"] == 2
    stranger = _interact(rest, found["searchId"], "clips/" + str(uuid.uuid4()), "TYPE_CLICK")
    assert stranger.status_code == 400, stranger.text  # not one of that search's results
    assert "interaction.clip" in stranger.text
    assert _interact(other, found["searchId"], clips[0], "TYPE_CLICK").status_code == 404  # not their search

    def stats(client: httpx.Client, **params: str) -> dict[str, Any]:
        response = client.get("/v1/searchStats", params={**window, **params})
        assert response.status_code == 200, response.text
        return dict(response.json())

    mine = _eventually(lambda: stats(rest), lambda s: int(s.get("searchCount", 0)) >= 2)
    assert int(mine["searchCount"]) == 2 and int(mine["clickedSearchCount"]) == 1
    assert mine["clickThroughRate"] == pytest.approx(0.5) and mine["zeroResultRate"] == pytest.approx(0.5)
    assert mine["meanReciprocalRank"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert int(mine["uniqueUserCount"]) == 1
    theirs_stats = _eventually(lambda: stats(other), lambda s: int(s.get("searchCount", 0)) >= 1)
    assert int(theirs_stats["searchCount"]) == 1 and theirs_stats["zeroResultRate"] == pytest.approx(1.0)
    everyone = _eventually(lambda: stats(admin), lambda s: int(s.get("searchCount", 0)) >= 3)
    assert int(everyone["searchCount"]) == 3 and int(everyone["uniqueUserCount"]) == 2

    def queries(client: httpx.Client) -> list[tuple[str, int]]:
        response = client.get("/v1/popularQueries", params=window)
        assert response.status_code == 200, response.text
        return [(q["query"], int(q["searchCount"])) for q in response.json().get("popularQueries", [])]

    assert queries(rest) == [("dog jumping into the water", 2)]  # two spellings, one query; not the other's
    assert queries(other) == [("quarterly revenue", 1)]
    assert sorted(queries(admin)) == [("dog jumping into the water", 2), ("quarterly revenue", 1)]
    assert other.get("/v1/searchStats", params={"user": "users/" + str(uuid.uuid4())}).status_code == 404


def test_usage_follows_a_users_upload_processing_searches_and_deletion(
        mesh: Mesh, credentials: Credentials, admin: httpx.Client, other: httpx.Client, tmp_path: Path) -> None:
    key = user_api_key(mesh.endpoints.envoy_url, credentials.admin, f"usage-{uuid.uuid4().hex[:8]}@example.com")
    with httpx.Client(base_url=mesh.endpoints.envoy_url, timeout=60, headers=bearer(key)) as client:
        me = client.get("/v1/users:me").json()["name"]
        path = make_scene_video(tmp_path / "usage.mp4", (SceneSpec(2.0, "testsrc2"), SceneSpec(2.0, "smptebars")))
        size = path.stat().st_size
        uploaded = rest_upload(client, path, title="usage")
        assert uploaded.status_code == 200, uploaded.text
        video = uploaded.json()["name"]
        ready = _eventually(lambda: client.get(f"/v1/{video}").json(), lambda v: v["state"] != "STATE_PENDING"
                            and v["state"] != "STATE_PROCESSING")
        assert ready["state"] == "STATE_READY", ready
        for query in ("test pattern", "colour bars"):
            _search(client, query)

        def usage(**params: str) -> dict[str, Any]:
            response = client.get("/v1/users/me/usage", params=params)
            assert response.status_code == 200, response.text
            return dict(response.json())

        got = _eventually(usage, lambda u: int(u.get("processedVideoCount", 0)) == 1
                          and int(u.get("searchCount", 0)) == 2 and float(u.get("processingSeconds", 0)) > 0)
        assert got["name"] == f"{me}/usage"
        assert (int(got["uploadCount"]), int(got["uploadedBytes"])) == (1, size)
        assert (int(got["storedVideoCount"]), int(got["storedBytes"])) == (1, size)
        assert int(got["processedVideoCount"]) == 1 and int(got["searchCount"]) == 2
        assert float(got["processedVideoSeconds"]) == pytest.approx(float(ready["durationSeconds"]))
        assert 0 < float(got["processingSeconds"]) < 300
        daily = usage(period="USAGE_PERIOD_LENGTH_DAY")
        assert daily["periods"] and sum(int(p.get("uploadCount", 0)) for p in daily["periods"]) == 1

        assert other.get(f"/v1/{me}/usage").status_code == 404  # another user's usage: as if there were none
        assert other.get("/v1/users/-/usage").status_code == 403
        everyone = admin.get("/v1/users/-/usage")
        assert everyone.status_code == 200 and int(everyone.json()["uploadCount"]) >= 1
        assert int(admin.get(f"/v1/{me}/usage").json()["uploadedBytes"]) == size

        assert client.delete(f"/v1/{video}").status_code == 200
        gone = _eventually(usage, lambda u: int(u.get("deletedVideoCount", 0)) == 1)
        assert (int(gone["deletedBytes"]), int(gone.get("storedVideoCount", 0)), int(gone.get("storedBytes", 0))) \
            == (size, 0, 0)
