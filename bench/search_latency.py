"""Search latency through Envoy, with the search log going to analytics (up) and with analytics stopped.

Starts a mesh on free ports (random CLIP/Whisper weights, as the e2e tests), uploads ``--videos`` small
videos, waits until they are READY, then times ``--searches`` REST searches (POST /v1/clips:search, one at
a time) with analytics up, with analytics stopped, and up again: A/B/A in one run on one machine. Also prints
the ingest real-time multiple (seconds of video processed per second of wall time, upload to READY).

    .venv/bin/python bench/search_latency.py --videos 3 --searches 200

With ``--baseline DIR`` (another checkout, e.g. a ``git worktree`` of the commit before a change, with a
``.venv``) a second mesh runs that checkout's code beside this one, both get the same videos, and the searches
alternate between the two meshes query by query (A, B, B, A, ...), so drift of a noisy machine hits both
alike: the before/after difference in one run. This checkout is searched twice per round, once with an API key
and once with a JWT access token (its user's), so the cost of each credential shows beside a baseline
without authentication.

With ``--without-auth`` the second mesh runs *this* checkout with authentication taken out (``bench/no_auth``:
every call is an administrator's, no credential read, no revocation or rate-limit round trip to Redis): the
same code otherwise, so the difference is exactly what authentication and the limits cost a search.

    .venv/bin/python bench/search_latency.py --videos 3 --searches 300 --without-auth
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# Run as a script from the repository root: the repository and its generated code are importable.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen/python")]

from services.launcher import Mesh, MeshConfig, MeshPorts  # noqa: E402
from services.launcher.credentials import ADMIN_EMAIL, admin_api_key, api_key, sign_in  # noqa: E402
from tests.e2e.clients import rest_upload  # noqa: E402
from tests.media import make_scene_video  # noqa: E402

MODEL_ENV = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_WHISPER_WEIGHTS": "random", "CLIPMIND_MODEL_SEED": "0",
             # A benchmark searches far more than a person may (100 a minute): the limits are raised out of reach,
             # so each search still pays for being counted.
             "CLIPMIND_RATE_LIMIT_REQUESTS_PER_HOUR": "1000000000",
             "CLIPMIND_RATE_LIMIT_SEARCHES_PER_MINUTE": "1000000000"}
QUERIES = ["a dog jumping into the water", "quarterly revenue", "red scene", "someone talking", "the end"]
REPEAT = False  # --repeat: the five queries over and over (answered by the query cache after the first round)


def query(i: int) -> str:
    """The i-th query: distinct every time (a number added), so that each search is computed, not cached."""
    return QUERIES[i % len(QUERIES)] if REPEAT else f"{QUERIES[i % len(QUERIES)]} {i}"


def wait_ready(client: httpx.Client, name: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = client.get(f"/v1/{name}").json()
        if video["state"] in ("STATE_READY", "STATE_FAILED"):
            return dict(video)
        time.sleep(0.25)
    raise TimeoutError(name)


def timed_searches(client: httpx.Client, n: int) -> list[float]:
    return interleaved([client], n)[0]


def summary(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    return (f"{label:<28} n={len(ms):<4} p50={statistics.median(ms):6.1f} ms  "
            f"p95={ms[int(0.95 * (len(ms) - 1))]:6.1f} ms  mean={statistics.fmean(ms):6.1f} ms")


# Runs in the baseline checkout (its own ``services`` package): starts its mesh on free ports, prints the Envoy
# URL, and stops the mesh when its standard input closes.
BASELINE_MESH = """
import json, os, sys
from pathlib import Path
from services.launcher import Mesh, MeshConfig, MeshPorts
env = json.loads(sys.argv[2])
os.environ.update(env)
mesh = Mesh(MeshConfig(state_dir=Path(sys.argv[1]), ports=MeshPorts.free(), extra_env=env))
print(mesh.start().envoy_url, flush=True)
try:
    sys.stdin.read()
finally:
    mesh.stop()
"""


def ingest(client: httpx.Client, state: Path, videos: int, label: str) -> None:
    video_s = 0.0
    started = time.perf_counter()
    names = []
    for i in range(videos):
        path = make_scene_video(state / f"v{i}.mp4", audio=False)
        response = rest_upload(client, path, title=f"bench {i}")
        response.raise_for_status()
        names.append(response.json()["name"])
    for name in names:
        video = wait_ready(client, name)
        video_s += float(video.get("durationSeconds", 0))
    wall = time.perf_counter() - started
    print(f"ingest{label}: {videos} videos, {video_s:.1f} s of video READY in {wall:.1f} s "
          f"(real-time multiple {video_s / wall:.2f}x, upload to READY, one worker)")


_asked = 0


def interleaved(clients: list[httpx.Client], n: int) -> list[list[float]]:
    """``n`` searches on each client, rotating which goes first; the times of each, in ms. Every search of the
    run has its own query (unless ``--repeat``), so no client is answered from a cache another one filled."""
    global _asked
    times: list[list[float]] = [[] for _ in clients]
    for i in range(n):
        order = list(range(len(clients)))
        shift = i % len(order)
        for k in order[shift:] + order[:shift]:
            _asked += 1
            started = time.perf_counter()
            clients[k].post("/v1/clips:search", json={"query": query(_asked), "pageSize": 10}).raise_for_status()
            times[k].append((time.perf_counter() - started) * 1000)
    return times


def baseline_headers(checkout: Path, state: Path, url: str) -> dict[str, str]:
    """A credential for the baseline mesh when its checkout has authentication (it wrote an admin password)."""
    password = state / "baseline" / "admin.password"
    if not (checkout / "services" / "launcher" / "credentials.py").exists() or not password.exists():
        return {}
    return {"authorization": f"Bearer {admin_api_key(url, password)}"}


def compare_with_baseline(client: httpx.Client, by_token: httpx.Client, checkout: Path, state: Path, videos: int,
                          n: int, *, without_auth: bool = False) -> None:
    import json

    python = checkout / ".venv" / "bin" / "python"
    path = f"{checkout}:{checkout / 'gen' / 'python'}"
    if without_auth:  # the shim's sitecustomize reaches every process of that mesh through PYTHONPATH
        path += f":{Path(__file__).resolve().parent / 'no_auth'}"
    process = subprocess.Popen(
        [str(python), "-c", BASELINE_MESH, str(state / "baseline"), json.dumps(MODEL_ENV)], cwd=checkout,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": path},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the baseline mesh did not start (exit {process.poll()})")
        headers = {} if without_auth else baseline_headers(checkout, state, url)
        name = "without authentication" if without_auth else checkout.name
        with httpx.Client(base_url=url, timeout=120, headers=headers) as baseline:
            ingest(baseline, state, videos, f" (baseline {name})")
            interleaved([client, by_token, baseline], 20)  # warm up
            by_key_ms, by_token_ms, theirs = interleaved([client, by_token, baseline], n)
        auth = "with" if headers else "without"
        print(summary("search, this, API key", by_key_ms))
        print(summary("search, this, access token", by_token_ms))
        print(summary(f"search, baseline {name}", theirs) + f" ({auth} a credential)")
        for label, ms in (("API key", by_key_ms), ("access token", by_token_ms)):
            paired = [a - b for a, b in zip(ms, theirs, strict=True)]  # the same round: the same moment's load
            print(f"p50 difference ({label} - baseline): {statistics.median(ms) - statistics.median(theirs):+.2f} ms;"
                  f" median of the {len(paired)} paired differences {statistics.median(paired):+.2f} ms")
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with, query by query")
    parser.add_argument("--repeat", action="store_true",
                        help="repeat five queries (cached after the first round) instead of distinct ones")
    parser.add_argument("--without-auth", action="store_true",
                        help="compare with this checkout's mesh with authentication taken out (bench/no_auth)")
    parser.add_argument("--no-limits", action="store_true",
                        help="turn the per-user rate limits off in this mesh (to see authentication alone)")
    args = parser.parse_args()
    global REPEAT
    REPEAT = args.repeat
    if args.no_limits:
        MODEL_ENV.update({"CLIPMIND_RATE_LIMIT_REQUESTS_PER_HOUR": "0", "CLIPMIND_RATE_LIMIT_SEARCHES_PER_MINUTE": "0"})
    with tempfile.TemporaryDirectory(prefix="clipmind-bench-") as tmp:
        state = Path(tmp)
        os.environ.update(MODEL_ENV)  # the launcher hands CLIPMIND_* to Triton from its own environment
        mesh = Mesh(MeshConfig(state_dir=state / "mesh", ports=MeshPorts.free(), extra_env=MODEL_ENV))
        endpoints = mesh.start()
        try:
            # The administrator, by API key and by access token (15 min: enough for a run of this bench).
            session = sign_in(endpoints.envoy_url, ADMIN_EMAIL, mesh.admin_password_path.read_text().strip())
            key = api_key(endpoints.envoy_url, session["accessToken"], "bench")
            with httpx.Client(base_url=endpoints.envoy_url, timeout=120,
                              headers={"authorization": f"Bearer {key}"}) as client, \
                    httpx.Client(base_url=endpoints.envoy_url, timeout=120,
                                 headers={"authorization": f"Bearer {session['accessToken']}"}) as by_token:
                ingest(client, state, args.videos, "")
                if args.baseline or args.without_auth:
                    checkout = Path(__file__).resolve().parents[1] if args.without_auth else args.baseline.resolve()
                    compare_with_baseline(client, by_token, checkout, state, args.videos, args.searches,
                                          without_auth=args.without_auth)
                    return
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
