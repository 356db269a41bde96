"""Search through Envoy REST at scale: latency, cached latency, throughput, and where the time goes.

Starts a mesh on free ports with both query encoders on (CLIP on random weights, allowed to rank, for speed;
the real Sentence-BERT), makes a user with an API key, and loads ``--clips`` synthetic clips of theirs in bulk
straight into the search schema (videos of 100 clips; per clip a 512-d visual vector, one transcript cue of
words drawn from a small vocabulary with its 384-d vector and tsvector), then builds the HNSW indexes as the
migrations define them. Then, all through Envoy with the user's API key:

* single client: ``--searches`` distinct queries one after another (p50, p99);
* cached: the same 20 queries again (answered by the query cache);
* concurrency 8: distinct queries from 8 threads for ``--seconds`` (searches per second).

Each figure comes with the median of every stage the search service reports in its ``Server-Timing`` header
(encode, visual, transcript, lexical, fuse, enrich, log, cache) and the Envoy-side rest (total round trip minus
the service's ``total``).

    .venv/bin/python bench/search.py --clips 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

# Run as a script from the repository root: the repository and its generated code are importable.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen/python")]

from services.launcher import Mesh, MeshConfig, MeshPorts  # noqa: E402
from services.launcher.credentials import admin_api_key, user_api_key  # noqa: E402
from services.media.subtitles import Cue  # noqa: E402
from tests.e2e.clients import rest_upload  # noqa: E402
from tests.media import make_scene_video  # noqa: E402

MODEL_ENV = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_WHISPER_WEIGHTS": "random", "CLIPMIND_MODEL_SEED": "0",
             "CLIPMIND_ALLOW_RANDOM_WEIGHTS_IN_RANKING": "true",  # CLIP takes part in ranking (both encoders on)
             "CLIPMIND_RATE_LIMIT_REQUESTS_PER_HOUR": "1000000000",
             "CLIPMIND_RATE_LIMIT_SEARCHES_PER_MINUTE": "1000000000"}
CLIPS_PER_VIDEO = 100
WORDS = ("harbour boat dawn fishing market revenue quarter budget team chef tomato garlic pasta puppy garden pool "
         "snow mountain road driver plough storm highway summer beach sunset concert guitar crowd stadium goal "
         "referee train station platform ticket museum painting sculpture lecture student teacher robot engine "
         "bridge river forest camp fire tent map compass island volcano desert camel").split()


def _units(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    v = rng.standard_normal((n, dims), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def load(dsn: str, owner: uuid.UUID, clips: int, models: dict[str, str]) -> float:
    """``clips`` clips of ``owner`` (READY videos of 100), with vectors and cues; returns seconds taken."""
    import asyncpg
    from pgvector.asyncpg import register_vector

    started = time.perf_counter()
    rng = np.random.default_rng(7)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "search, public"})
    await register_vector(conn)
    try:
        await conn.execute("DROP INDEX IF EXISTS visual_vectors_hnsw; DROP INDEX IF EXISTS transcript_vectors_hnsw;"
                           "DROP INDEX IF EXISTS transcript_segments_tsv_idx")
        for first in range(0, clips, 10_000):
            n = min(10_000, clips - first)
            visual, spoken = _units(rng, n, 512), _units(rng, n, 384)
            videos, rows, frames, cues, tvecs, vvecs = [], [], [], [], [], []
            for i in range(n):
                k = first + i
                if k % CLIPS_PER_VIDEO == 0:
                    video = uuid.uuid4()
                    videos.append((video, owner, 1, "READY", 1000.0, f"bench video {k // CLIPS_PER_VIDEO}",
                                   f"videos/{video}/source.mp4"))
                clip, seg = uuid.uuid4(), uuid.uuid4()
                start = (k % CLIPS_PER_VIDEO) * 10.0
                text = " ".join(rng.choice(WORDS, 8))
                rows.append((clip, video, owner, k % CLIPS_PER_VIDEO, start, start + 10.0, ""))
                frames.append((clip, video, owner, clip, 0, start + 5.0, start, start + 10.0))  # one per clip
                cues.append((seg, video, owner, clip, k % CLIPS_PER_VIDEO, start + 1, start + 4, text, "SIDECAR"))
                tvecs.append((seg, video, owner, models["sbert"], spoken[i]))
                vvecs.append((clip, video, owner, models["clip"], visual[i], clip))
            await conn.copy_records_to_table("videos", records=videos, columns=[
                "id", "owner_id", "revision", "state", "duration_s", "title", "blob_key"])
            await conn.copy_records_to_table("clips", records=rows, columns=[
                "id", "video_id", "owner_id", "idx", "start_s", "end_s", "thumbnail_key"])
            await conn.copy_records_to_table("keyframes", records=frames, columns=[
                "id", "video_id", "owner_id", "clip_id", "idx", "time_s", "start_s", "end_s"])
            await conn.copy_records_to_table("transcript_segments", records=cues, columns=[
                "id", "video_id", "owner_id", "clip_id", "idx", "start_s", "end_s", "text", "source"])
            await conn.copy_records_to_table("transcript_vectors", records=tvecs, columns=[
                "id", "video_id", "owner_id", "model", "embedding"])
            await conn.copy_records_to_table("visual_vectors", records=vvecs, columns=[
                "id", "video_id", "owner_id", "model", "embedding", "clip_id"])
        await conn.execute("UPDATE transcript_segments SET tsv = to_tsvector('english'::regconfig, text) "
                           "WHERE tsv IS NULL")
        await conn.execute("SET maintenance_work_mem = '2GB'; SET max_parallel_maintenance_workers = 2")
        await conn.execute("CREATE INDEX visual_vectors_hnsw ON visual_vectors USING hnsw "
                           "(embedding vector_cosine_ops)", timeout=3600)
        await conn.execute("CREATE INDEX transcript_vectors_hnsw ON transcript_vectors USING hnsw "
                           "(embedding vector_cosine_ops)", timeout=3600)
        await conn.execute("CREATE INDEX transcript_segments_tsv_idx ON transcript_segments USING gin (tsv)",
                           timeout=3600)
        await conn.execute("VACUUM ANALYZE", timeout=3600)
    finally:
        await conn.close()
    return time.perf_counter() - started


def wait_ready(client: httpx.Client, name: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get(f"/v1/{name}").json()["state"] in ("STATE_READY", "STATE_FAILED"):
            return
        time.sleep(0.25)
    raise TimeoutError(name)


async def model_ids(dsn: str) -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT visual_model, transcript_model FROM ingest.videos "
                                  "WHERE transcript_model <> '' AND visual_model <> '' LIMIT 1")
        assert row is not None, "the first video recorded no models"
        return {"clip": row["visual_model"], "sbert": row["transcript_model"]}
    finally:
        await conn.close()


def stages(header: str) -> dict[str, float]:
    found = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            found[name] = float(dur)
    return found


class Run:
    """Times of one kind of search, with their Server-Timing stages."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.stages: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def search(self, client: httpx.Client, text: str) -> None:
        started = time.perf_counter()
        response = client.post("/v1/clips:search", json={"query": text, "pageSize": 10})
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        found = stages(response.headers.get("server-timing", ""))
        found["envoy+client"] = elapsed - found.get("total", 0.0)
        with self.lock:
            self.ms.append(elapsed)
            for name, value in found.items():
                self.stages.setdefault(name, []).append(value)

    def report(self, label: str, wall_s: float | None = None) -> str:
        ms = sorted(self.ms)
        line = (f"{label:<34} n={len(ms):<5} p50={statistics.median(ms):6.1f} ms  "
                f"p99={ms[min(len(ms) - 1, int(0.99 * len(ms)))]:6.1f} ms")
        if wall_s:
            line += f"  {len(ms) / wall_s:6.1f} searches/s"
        parts = ", ".join(f"{name} {statistics.median(v):.1f}" for name, v in self.stages.items())
        return f"{line}\n{'':<36}stage p50 (ms): {parts}"


def question(i: int) -> str:
    rng = np.random.default_rng(10_000 + i)
    return " ".join(rng.choice(WORDS, 3)) + f" scene {i}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clipmind-bench-") as tmp:
        state = Path(tmp)
        os.environ.update(MODEL_ENV)
        mesh = Mesh(MeshConfig(state_dir=state / "mesh", ports=MeshPorts.free(), extra_env=MODEL_ENV))
        endpoints = mesh.start()
        try:
            url = endpoints.envoy_url
            assert url is not None
            admin = admin_api_key(url, mesh.admin_password_path)
            key = user_api_key(url, admin, "bench@example.com")
            headers = {"authorization": f"Bearer {key}"}
            with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
                me = client.get("/v1/users:me").json()
                owner = uuid.UUID(me["name"].split("/")[1])
                # One real video through the pipeline: its vectors name the models the search service uses.
                video = make_scene_video(state / "one.mp4", subtitles=[Cue(1.0, 4.0, "the harbour at dawn")],
                                         audio=False)
                upload = rest_upload(client, video, title="one")
                upload.raise_for_status()
                wait_ready(client, upload.json()["name"])
                postgres = mesh.part("postgres")
                ids = asyncio.run(model_ids(postgres.dsn))  # type: ignore[attr-defined]
                took = asyncio.run(load(postgres.dsn, owner, args.clips, ids))  # type: ignore[attr-defined]
                print(f"{args.clips:,} clips of one user loaded and indexed in {took:.0f} s "
                      f"(models {ids['clip']}, {ids['sbert']})")
                for i in range(20):  # warm up: connections, plans, Triton
                    client.post("/v1/clips:search", json={"query": f"warm up {i}", "pageSize": 10})

                single = Run()
                for i in range(args.searches):
                    single.search(client, question(i))
                print(single.report("single client, distinct queries"))

                cached = Run()
                for _ in range(5):
                    for i in range(20):
                        cached.search(client, question(i))
                print(cached.report("single client, cached queries"))

                crowd = Run()
                deadline = time.monotonic() + args.seconds
                counter = iter(range(1_000_000, 10_000_000))
                counter_lock = threading.Lock()

                def worker() -> None:
                    with httpx.Client(base_url=url, timeout=120, headers=headers) as own:
                        while time.monotonic() < deadline:
                            with counter_lock:
                                i = next(counter)
                            crowd.search(own, question(i))

                threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
                started = time.monotonic()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                print(crowd.report(f"concurrency {args.concurrency}, distinct queries",
                                   time.monotonic() - started))
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
