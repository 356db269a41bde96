"""Owner-filtered vector search latency (pgvector 0.6, no iterative index scans) by the owner's share.

Loads ``--vectors`` clips with visual vectors (512-d, clustered by video as real scenes are) into a fresh database
on an embedded PostgreSQL (or on ``CLIPMIND_TEST_DATABASE_URL``'s server), owned by users holding 0.1 %, 1 % and
10 % of them and one holding the rest, builds the HNSW index, then times ``--queries`` queries per owner (each
near one of that owner's clips) through ``PgVectorIndex.query`` as deployed (the plan chosen by the owner's
share) and with the HNSW path forced, and prints the p50 and the plans taken. 100 % is the administrator's
unfiltered HNSW path (a user who owns everything is planned the same way as the large owner).

    .venv/bin/python bench/filtered_search.py --vectors 100000 --queries 50 --top-k 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

# Run as a script from the repository root: the repository and its generated code are importable.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen/python")]

from services.launcher import EmbeddedPostgres, free_port  # noqa: E402
from services.search.vectors import PgVectorIndex  # noqa: E402
from tests.db_setup import fresh_database, service_db  # noqa: E402
from tests.integration.test_search_ownership import CLIPS_PER_VIDEO, load_collection  # noqa: E402

MODEL = "clip/bench"


async def _p50(index: PgVectorIndex, owner: uuid.UUID | None, targets: list[np.ndarray], top_k: int,
               rng: np.random.Generator) -> tuple[float, str]:
    times = []
    for target in targets:
        query = target + 0.05 * rng.standard_normal(target.shape[0]).astype(np.float32) / np.sqrt(target.shape[0])
        started = time.perf_counter()
        await index.query("visual", MODEL, query, top_k, owner=owner)
        times.append(time.perf_counter() - started)
    paths = ", ".join(f"{k} {v}" for k, v in sorted(index.path_counts.items()))
    index.path_counts.clear()
    return statistics.median(times) * 1000, paths


async def run(dsn: str, vectors: int, queries: int, top_k: int) -> None:
    shares = {"0.1 %": vectors // 1000, "1 %": vectors // 100, "10 %": vectors // 10}
    shares = {k: max(CLIPS_PER_VIDEO, v // CLIPS_PER_VIDEO * CLIPS_PER_VIDEO) for k, v in shares.items()}
    shares["the rest"] = vectors - sum(shares.values())
    async with fresh_database(dsn) as fresh:
        db = await service_db(fresh, "search")
        try:
            started = time.perf_counter()
            users, by_clip = await load_collection(db, MODEL, shares, n=vectors)
            print(f"{vectors:,} vectors loaded and indexed in {time.perf_counter() - started:.1f} s; "
                  f"p50 of {queries} queries, top {top_k}")
            owner_of = {r["id"]: r["owner_id"] for r in await db.fetch("SELECT id, owner_id FROM clips")}
            rng = np.random.default_rng(1)
            chosen, forced = PgVectorIndex(db), PgVectorIndex(db, exact_scan_max_rows=0)
            for name, count in shares.items():
                theirs = [c for c, o in owner_of.items() if o == users[name]]
                targets = [by_clip[theirs[i]] for i in rng.choice(len(theirs), queries)]
                for label, index in (("chosen plan", chosen), ("HNSW forced", forced)):
                    p50, paths = await _p50(index, users[name], targets, top_k, rng)
                    print(f"  {name:>9} ({count:>7,} vectors) {label:<12} p50 {p50:7.1f} ms  ({paths})")
            targets = [by_clip[c] for c in list(by_clip)[:queries]]
            p50, paths = await _p50(chosen, None, targets, top_k, rng)
            print(f"  {'100 %':>9} (administrator, no owner filter)  p50 {p50:7.1f} ms  ({paths})")
        finally:
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=10, help="10: a page; 200: what Searcher asks per modality")
    args = parser.parse_args()
    external = os.environ.get("CLIPMIND_TEST_DATABASE_URL")
    if external:
        asyncio.run(run(external, args.vectors, args.queries, args.top_k))
        return
    state = Path(tempfile.mkdtemp(prefix="clipmind-bench-"))
    server = EmbeddedPostgres(state / "postgres", state / "postgres.log", free_port())
    server.start()
    try:
        asyncio.run(run(server.dsn, args.vectors, args.queries, args.top_k))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
