"""Envoy at the edge: only the configured host names are served (DNS rebinding), CORS only for the configured
origins, and REST bodies only as JSON (text/plain and form bodies, which any web page can send cross-site
without a preflight, are never transcoded into calls)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import EDGE

pytestmark = pytest.mark.e2e

ALLOWED = EDGE.cors_origins[0]
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}


def test_cors_preflight_answers_only_the_allowed_origin(rest: httpx.Client) -> None:
    ok = rest.options("/v1/clips:search", headers={"origin": ALLOWED, **PREFLIGHT})
    assert ok.headers.get("access-control-allow-origin") == ALLOWED, ok.headers
    assert "authorization" in ok.headers.get("access-control-allow-headers", "").lower()
    for origin in ("https://evil.example", "null", ALLOWED + ".evil.example"):
        refused = rest.options("/v1/clips:search", headers={"origin": origin, **PREFLIGHT})
        assert "access-control-allow-origin" not in refused.headers, (origin, refused.headers)
        assert "access-control-allow-credentials" not in refused.headers
    # An actual request from the allowed origin is answered with the allow header; from another, without.
    assert rest.get("/v1/videos", headers={"origin": ALLOWED}).headers.get("access-control-allow-origin") == ALLOWED
    assert "access-control-allow-origin" not in rest.get("/v1/videos", headers={"origin": "https://evil.example"}).headers


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; "
                                          "boundary=x", "", "application/jsonp"])
def test_a_non_json_body_is_refused(rest: httpx.Client, content_type: str) -> None:
    body = b'{"query": "the red scene"}'
    headers = {"content-type": content_type} if content_type else {}
    response = rest.post("/v1/clips:search", content=body, headers=headers)
    if not content_type:  # httpx sends no content-type for raw bytes: still not JSON
        assert "content-type" not in response.request.headers
    assert response.status_code == 415, (content_type, response.status_code, response.text)
    assert response.json()["details"][0]["reason"] == "UNSUPPORTED_MEDIA_TYPE"

    def chunks():  # type: ignore[no-untyped-def]
        yield body  # no Content-Length: chunked transfer encoding

    chunked = rest.post("/v1/clips:search", content=chunks(), headers=headers)
    assert chunked.status_code == 415, (content_type, chunked.status_code, chunked.text)


def test_json_bodies_and_bodiless_posts_pass(rest: httpx.Client) -> None:
    assert rest.post("/v1/clips:search", json={"query": "the red scene"}).status_code == 200
    assert rest.post("/v1/clips:search", content=b'{"query": "x"}',
                     headers={"content-type": "application/json; charset=utf-8"}).status_code == 200
    missing = rest.post(f"/v1/jobs/{'0' * 8}-0000-0000-0000-{'0' * 12}:cancel")  # no body at all: transcoded
    assert missing.status_code == 404, missing.text


def test_a_foreign_host_is_refused(endpoints, rest: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    port = endpoints.envoy_url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", f"rebind.attacker.test:{port}"):
        refused = rest.get("/v1/videos", headers={"host": host})
        assert refused.status_code == 403, (host, refused.status_code)
        assert refused.json()["details"][0]["reason"] == "HOST_NOT_ALLOWED"
        assert rest.get("/media/anything", headers={"host": host}).status_code == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost", "clipmind.test"):
        assert rest.get("/v1/videos", headers={"host": host}).status_code == 200, host
