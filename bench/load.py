"""Load: N concurrent uploaders and M searchers against a ClipMind mesh through Envoy (REST).

    .venv/bin/python bench/load.py                          # starts a private mesh (free ports), 20 uploaders
    .venv/bin/python bench/load.py --url http://127.0.0.1:8080 --uploaders 50 --searchers 4 --uploads 2

Each uploader does ``--uploads`` resumable uploads (create, PUT in ``--chunk`` pieces, complete) of small
generated videos, all uploaders at once, so writes and completions of many uploads interleave. Searchers
run back to back while uploads are in flight. It prints uploads/s, upload latency p50/p99 (create to
completion), search p50/p99 while the uploads run, and errors by HTTP status and reason. It asserts
nothing: figures go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen/python")]

from tests.e2e.clients import error_reason  # noqa: E402
from tests.media import SceneSpec, make_scene_video  # noqa: E402

QUERIES = ["a red screen", "colour bars", "someone talking about the weather", "a test pattern", "green"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def upload(client: httpx.Client, data: bytes, name: str, chunk: int) -> tuple[float, str]:
    """One resumable upload; (seconds, "" or an error label)."""
    started = time.monotonic()
    try:
        return _upload(client, data, name, chunk, started)
    except httpx.TransportError as exc:  # a request that hangs (the old deadlock) or a dropped connection
        return time.monotonic() - started, f"{type(exc).__name__}"


def _upload(client: httpx.Client, data: bytes, name: str, chunk: int, started: float) -> tuple[float, str]:
    created = client.post("/v1/uploads", json={"filename": name, "contentType": "video/mp4",
                                               "sizeBytes": str(len(data))})
    if created.status_code != 200:
        return time.monotonic() - started, f"create {created.status_code} {error_reason(created)}"
    upload_name = created.json()["name"]
    offset = 0
    while offset < len(data):
        put = client.put(f"/v1/{upload_name}:write", params={"offset": offset},
                         content=data[offset:offset + chunk], headers={"content-type": "application/octet-stream"})
        if put.status_code != 200:
            return time.monotonic() - started, f"write {put.status_code} {error_reason(put)}"
        offset = int(put.json()["committedSize"])
    done = client.post(f"/v1/{upload_name}:complete", json={"title": name})
    if done.status_code != 200:
        return time.monotonic() - started, f"complete {done.status_code} {error_reason(done)}"
    return time.monotonic() - started, ""


def run(
    url: str, key: str, uploaders: int, uploads: int, searchers: int, chunk: int, media_dir: Path,
    timeout_s: float = 300,
) -> None:
    videos = []
    for i, source in enumerate(["testsrc2", "smptebars", "color=c=red", "testsrc"]):
        path = make_scene_video(media_dir / f"load-{i}.mp4", [SceneSpec(2.0, source), SceneSpec(2.0, "color=c=blue")],
                                audio=False)
        videos.append(path.read_bytes())
    auth = {"authorization": f"Bearer {key}"}
    upload_times: list[float] = []
    search_times: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    uploading = threading.Event()
    uploading.set()

    def uploader(n: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=auth) as client:
            for k in range(uploads):
                seconds, error = upload(client, videos[(n + k) % len(videos)], f"user{n % 7}-{n}-{k}.mp4", chunk)
                with lock:
                    (errors.update([error]) if error else upload_times.append(seconds))

    def searcher(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60, headers=auth) as client:
            k = 0
            while uploading.is_set():
                started = time.monotonic()
                response = client.post("/v1/clips:search", json={"query": QUERIES[(n + k) % len(QUERIES)]})
                with lock:
                    if response.status_code == 200:
                        search_times.append(time.monotonic() - started)
                    else:
                        errors.update([f"search {response.status_code} {error_reason(response)}"])
                k += 1

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=uploaders + searchers) as pool:
        search_futures = [pool.submit(searcher, n) for n in range(searchers)]
        upload_futures = [pool.submit(uploader, n) for n in range(uploaders)]
        for future in upload_futures:
            future.result()
        elapsed = time.monotonic() - started
        uploading.clear()
        for future in search_futures:
            future.result()
    total = uploaders * uploads
    print(f"uploaders {uploaders} x {uploads} uploads ({len(videos[0]) // 1024} KiB-ish each, {chunk // 1024} KiB "
          f"chunks), searchers {searchers}")
    print(f"uploads: {len(upload_times)}/{total} ok in {elapsed:.1f} s = {len(upload_times) / elapsed:.2f} uploads/s")
    print(f"upload latency: p50 {percentile(upload_times, 0.5):.2f} s, p99 {percentile(upload_times, 0.99):.2f} s, "
          f"max {max(upload_times, default=float('nan')):.2f} s")
    print(f"search while uploading: {len(search_times)} searches, p50 {percentile(search_times, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(search_times, 0.99) * 1000:.0f} ms"
          + (f", mean {statistics.mean(search_times) * 1000:.0f} ms" if search_times else ""))
    print("errors: " + (", ".join(f"{label} x{n}" for label, n in errors.most_common()) or "none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="Envoy base URL of a running mesh (default: start a private one)")
    parser.add_argument("--key", default=os.environ.get("CLIPMIND_API_KEY", ""),
                        help="API key for --url (default: $CLIPMIND_API_KEY)")
    parser.add_argument("--uploaders", type=int, default=20)
    parser.add_argument("--uploads", type=int, default=1, help="uploads per uploader")
    parser.add_argument("--searchers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=256 * 1024, help="bytes per PUT")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one HTTP request may take")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clipmind-load-") as tmp:
        if args.url:
            if not args.key:
                parser.error("--url needs --key (or CLIPMIND_API_KEY): an API key of the mesh")
            run(args.url, args.key, args.uploaders, args.uploads, args.searchers, args.chunk, Path(tmp), args.timeout)
            return
        from services.launcher import Mesh, MeshConfig, MeshPorts
        from services.launcher.credentials import admin_api_key

        # Load from one user far beyond a person's limits: raised out of reach (each call is still counted).
        limits = {f"CLIPMIND_RATE_LIMIT_{name}": "1000000000"
                  for name in ("REQUESTS_PER_HOUR", "SEARCHES_PER_MINUTE", "UPLOADS_PER_HOUR")}
        mesh = Mesh(MeshConfig(state_dir=Path(tmp) / "mesh", ports=MeshPorts.free(), extra_env=limits))
        with mesh as endpoints:
            assert endpoints.envoy_url
            key = admin_api_key(endpoints.envoy_url, mesh.admin_password_path, "load bench")
            run(endpoints.envoy_url, key, args.uploaders, args.uploads, args.searchers, args.chunk, Path(tmp),
                args.timeout)


if __name__ == "__main__":
    main()
