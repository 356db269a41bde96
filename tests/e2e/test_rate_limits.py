"""Per-user rate limits through Envoy: 200 concurrent searches by one user → exactly 100 answered, the other
100 are HTTP 429 with Retry-After (and a RetryInfo in the JSON status); another user is unaffected."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from services.launcher.credentials import user_api_key
from tests.e2e.clients import bearer

pytestmark = pytest.mark.e2e


def test_two_hundred_concurrent_searches_admit_exactly_one_hundred(endpoints, credentials) -> None:  # type: ignore[no-untyped-def]
    eve = user_api_key(endpoints.envoy_url, credentials.admin, f"eve-{uuid.uuid4().hex[:8]}@example.com")
    fay = user_api_key(endpoints.envoy_url, credentials.admin, f"fay-{uuid.uuid4().hex[:8]}@example.com")
    limits = httpx.Limits(max_connections=50)
    with httpx.Client(base_url=endpoints.envoy_url, timeout=120, headers=bearer(eve), limits=limits) as as_eve:

        def search(i: int) -> httpx.Response:
            return as_eve.post("/v1/clips:search", json={"query": f"scene {i}"})

        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(search, range(200)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) == 100 and codes.count(429) == 100, {c: codes.count(c) for c in set(codes)}
    for refused in (a for a in answers if a.status_code == 429):
        assert 1 <= int(refused.headers["retry-after"]) <= 60, refused.headers
        status = refused.json()
        assert any(d.get("reason") == "RATE_LIMITED" for d in status["details"]), status
        assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in status["details"]), status
    with httpx.Client(base_url=endpoints.envoy_url, timeout=60, headers=bearer(fay)) as as_fay:
        assert as_fay.post("/v1/clips:search", json={"query": "scene"}).status_code == 200
