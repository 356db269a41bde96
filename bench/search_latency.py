"""Search latency through Envoy, with the search log going to analytics (up) and with analytics stopped.

Starts a mesh on free ports (random CLIP/Whisper weights, as the e2e tests), uploads ``--videos`` small
videos, waits until they are READY, then times ``--searches`` REST searches (POST /v1/clips:search, one at
a time) with analytics up, with analytics stopped, and up again: A/B/A in one run on one machine. Also prints
the ingest real-time multiple (seconds of video processed per second of wall time, upload to READY).

    .venv/bin/python bench/search_latency.py --videos 3 --searches 200

Run the same script from an older checkout for a before/after comparison (it needs only ``services.launcher``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from services.launcher import Mesh, MeshConfig, MeshPorts
from tests.e2e.clients import rest_upload
from tests.media import make_scene_video

MODEL_ENV = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_WHISPER_WEIGHTS": "random", "CLIPMIND_MODEL_SEED": "0"}
QUERIES = ["a dog jumping into the water", "quarterly revenue", "red scene", "someone talking", "the end"]


def wait_ready(client: httpx.Client, name: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = client.get(f"/v1/{name}").json()
        if video["state"] in ("STATE_READY", "STATE_FAILED"):
            return dict(video)
        time.sleep(0.25)
    raise TimeoutError(name)


def timed_searches(client: httpx.Client, n: int) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        client.post("/v1/clips:search", json={"query": QUERIES[i % len(QUERIES)], "pageSize": 10}).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    return (f"{label:<28} n={len(ms):<4} p50={statistics.median(ms):6.1f} ms  "
            f"p95={ms[int(0.95 * (len(ms) - 1))]:6.1f} ms  mean={statistics.fmean(ms):6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--searches", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clipmind-bench-") as tmp:
        state = Path(tmp)
        os.environ.update(MODEL_ENV)  # the launcher hands CLIPMIND_* to Triton from its own environment
        mesh = Mesh(MeshConfig(state_dir=state / "mesh", ports=MeshPorts.free(), extra_env=MODEL_ENV))
        endpoints = mesh.start()
        try:
            with httpx.Client(base_url=endpoints.envoy_url, timeout=120) as client:
                video_s = 0.0
                started = time.perf_counter()
                names = []
                for i in range(args.videos):
                    path = make_scene_video(state / f"v{i}.mp4", audio=False)
                    response = rest_upload(client, path, title=f"bench {i}")
                    response.raise_for_status()
                    names.append(response.json()["name"])
                for name in names:
                    video = wait_ready(client, name)
                    video_s += float(video.get("durationSeconds", 0))
                wall = time.perf_counter() - started
                print(f"ingest: {args.videos} videos, {video_s:.1f} s of video READY in {wall:.1f} s "
                      f"(real-time multiple {video_s / wall:.2f}x, upload to READY, one worker)")
                timed_searches(client, 20)  # warm up
                print(summary("search, analytics up", timed_searches(client, args.searches)))
                analytics = mesh.part("analytics")
                analytics.stop()
                try:
                    print(summary("search, analytics stopped", timed_searches(client, args.searches)))
                finally:
                    analytics.start()
                print(summary("search, analytics up again", timed_searches(client, args.searches)))
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
