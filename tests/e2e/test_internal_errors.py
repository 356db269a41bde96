"""An INTERNAL error through Envoy tells the user a request id and nothing about the servers.

The ingest process's staging directory is replaced by a plain file for a moment, so creating an upload
fails inside the server (the OS error names a path on the host); the answer must carry only a request id
(the same one Envoy returns in ``x-request-id`` and the log line holds), never the path or a host name."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e


def test_internal_error_shows_a_request_id_and_no_paths_or_hosts(endpoints, mesh, rest: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    staging = Path(endpoints.blob_dir).parent / "staging"
    aside = staging.with_name("staging.aside")
    staging.mkdir(exist_ok=True)
    staging.rename(aside)
    staging.write_text("not a directory")
    try:
        response = rest.post("/v1/uploads", json={"filename": "a.mp4", "contentType": "video/mp4", "sizeBytes": "10"})
    finally:
        staging.unlink()
        aside.rename(staging)
    assert response.status_code == 500, response.text
    body = response.json()
    request_id = response.headers.get("x-request-id", "")
    assert request_id and request_id in body["message"], (response.headers, body)
    text = response.text
    for leak in (str(staging.parent), "/tmp", "staging", "127.0.0.1", "localhost", "NotADirectoryError", "Errno"):
        assert leak not in text, f"{leak!r} leaked: {text}"
    reasons = [d.get("reason") for d in body.get("details", []) if d.get("@type", "").endswith("ErrorInfo")]
    assert reasons == ["INTERNAL_ERROR"]
    log = mesh.log_path("ingest").read_text(errors="replace")
    assert request_id in log and "NotADirectoryError" in log[log.index(request_id):], "the log has the details"
    # The service works again once the directory is back.
    again = rest.post("/v1/uploads", json={"filename": "a.mp4", "contentType": "video/mp4", "sizeBytes": "10"})
    assert again.status_code == 200, again.text
    shutil.rmtree(aside, ignore_errors=True)
