"""Many users uploading at once through Envoy: every upload completes, none waits beyond queueing.

50 REST uploads (several users' worth of files) are created, written in small interleaved chunks and
completed at the same time. Before the fix, uploads held a pooled database connection while asking the
pool for more, and 12 concurrent uploads deadlocked ingest until every request timed out."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.clients import bearer, error_reason
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.e2e

UPLOADS = 50
CHUNK = 32 * 1024


def _upload(base_url: str, credential: str, data: bytes, name: str) -> float:
    started = time.monotonic()
    with httpx.Client(base_url=base_url, timeout=180, headers=bearer(credential)) as client:
        created = client.post("/v1/uploads", json={"filename": name, "contentType": "video/mp4",
                                                   "sizeBytes": str(len(data))})
        assert created.status_code == 200, created.text
        upload = created.json()["name"]
        offset = 0
        while offset < len(data):
            put = client.put(f"/v1/{upload}:write", params={"offset": offset}, content=data[offset:offset + CHUNK],
                             headers={"content-type": "application/octet-stream"})
            assert put.status_code == 200, (put.status_code, error_reason(put), put.text)
            offset = int(put.json()["committedSize"])
        done = client.post(f"/v1/{upload}:complete", json={"title": name})
        assert done.status_code == 200, (done.status_code, error_reason(done), done.text)
        assert done.json()["sizeBytes"] == str(len(data))
    return time.monotonic() - started


def test_fifty_concurrent_rest_uploads_all_complete(endpoints, credentials, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = [
        make_scene_video(tmp_path / f"user{i}.mp4", [SceneSpec(1.5, src), SceneSpec(1.5, "color=c=blue")],
                         audio=False).read_bytes()
        for i, src in enumerate(["testsrc2", "smptebars", "color=c=red", "testsrc", "color=c=green"])
    ]
    single = max(_upload(endpoints.envoy_url, credentials.user, data, f"alone{i}.mp4") for i, data in enumerate(files))

    with ThreadPoolExecutor(max_workers=UPLOADS) as pool:
        futures = [pool.submit(_upload, endpoints.envoy_url, credentials.user, files[i % len(files)],
                               f"user{i % 5}-{i}.mp4") for i in range(UPLOADS)]
        times = [f.result() for f in futures]
    # No deadlock and no timeouts: the slowest waited at most for all uploads queued one behind another.
    assert max(times) <= single * UPLOADS + 10, (single, sorted(times)[-5:])
    print(f"single upload {single:.2f} s; {UPLOADS} concurrent: median {sorted(times)[UPLOADS // 2]:.2f} s, "
          f"max {max(times):.2f} s")
