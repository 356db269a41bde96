"""Filtered vector search (``retrieval.PgRetrieval``: pgvector 0.8 iterative HNSW scans) by owner share and filter.

Loads ``--vectors`` clips with visual vectors (512-d, clustered by video as real scenes are) into a fresh database
on an embedded PostgreSQL (or on ``CLIPMIND_TEST_DATABASE_URL``'s server), owned by users holding 0.1 %, 1 % and
10 % of them and one holding the rest, builds the HNSW index, then times ``--queries`` queries per case (each near
one of that owner's clips) as deployed and ranked exactly (``PgRetrieval(exact=True)``), and prints p50 of both,
recall@k of the deployed answer against the exact one, full pages, and how statements were answered. Cases: each
owner's share; the administrator (no owner filter); and, for the administrator, a video filter (one video), an
upload-date window (~1 % of the videos) and a clip-duration window (~5 % of the clips).

    .venv/bin/python bench/filtered_search.py --vectors 100000 --queries 30 --top-k 10
    .venv/bin/python bench/filtered_search.py --explain     # also print each case's plan once
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

# Run as a script from the repository root: the repository and its generated code are importable.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen/python")]

from services.launcher import EmbeddedPostgres, free_port  # noqa: E402
from services.search.ports import ClipFilter  # noqa: E402
from services.search.retrieval import CONNECTION_SETTINGS, PgRetrieval  # noqa: E402
from tests.db_setup import fresh_database, service_db  # noqa: E402
from tests.integration.test_search_ownership import CLIPS_PER_VIDEO, load_collection  # noqa: E402

MODEL = "clip/bench"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


async def _case(deployed: PgRetrieval, exact: PgRetrieval, where: ClipFilter, targets: list[np.ndarray],
                top_k: int, rng: np.random.Generator) -> str:
    times: dict[str, list[float]] = {"deployed": [], "exact": []}
    recalls, page_recalls, full = [], [], 0
    for target in targets:
        query = target + 0.05 * rng.standard_normal(target.shape[0]).astype(np.float32) / np.sqrt(target.shape[0])
        answers = {}
        for label, retrieval in (("deployed", deployed), ("exact", exact)):
            started = time.perf_counter()
            answers[label] = await retrieval.visual(MODEL, query, top_k, where)
            times[label].append(time.perf_counter() - started)
        truth = {m.clip_id for m in answers["exact"]}
        recalls.append(len({m.clip_id for m in answers["deployed"]} & truth) / max(1, len(truth)))
        page = {m.clip_id for m in answers["exact"][:10]}  # what a page of results shows
        page_recalls.append(len({m.clip_id for m in answers["deployed"][:10]} & page) / max(1, len(page)))
        full += len(answers["deployed"]) == len(answers["exact"])
    paths = ", ".join(f"{k} {v}" for k, v in sorted(deployed.path_counts.items()))
    deployed.path_counts.clear()
    p50 = {label: statistics.median(samples) * 1000 for label, samples in times.items()}
    return (f"p50 {p50['deployed']:6.1f} ms (exact {p50['exact']:6.1f} ms)  recall@{top_k} "
            f"{statistics.mean(recalls):.3f}  top-10 recall {statistics.mean(page_recalls):.3f}  "
            f"full {full}/{len(targets)}  ({paths})")


async def run(dsn: str, vectors: int, queries: int, top_k: int, explain: bool) -> None:
    shares = {"0.1 %": vectors // 1000, "1 %": vectors // 100, "10 %": vectors // 10}
    shares = {k: max(CLIPS_PER_VIDEO, v // CLIPS_PER_VIDEO * CLIPS_PER_VIDEO) for k, v in shares.items()}
    shares["the rest"] = vectors - sum(shares.values())
    async with fresh_database(dsn) as fresh:
        db = await service_db(fresh, "search")
        try:
            started = time.perf_counter()
            users, by_clip = await load_collection(db, MODEL, shares, n=vectors)
            # Upload dates one day apart by video, clip lengths 1..20 s: what the date and duration cases filter.
            await db.execute("UPDATE videos SET create_time = $1::timestamptz + n.i * interval '1 day' FROM "
                             "(SELECT id, row_number() OVER (ORDER BY id) - 1 AS i FROM videos) n "
                             "WHERE n.id = videos.id", EPOCH)
            await db.execute("UPDATE clips SET end_s = start_s + 1 + (abs(hashtext(id::text)) % 20)")
            await db.execute("ANALYZE videos, clips")
            print(f"{vectors:,} vectors loaded and indexed in {time.perf_counter() - started:.1f} s; "
                  f"p50 of {queries} queries, top {top_k}")
            rows = await db.fetch("SELECT c.id, c.owner_id, c.video_id FROM clips c")
            owner_of = {r["id"]: r["owner_id"] for r in rows}
            rng = np.random.default_rng(1)
            deployed, exact = PgRetrieval(db), PgRetrieval(db, exact=True)
            n_videos = vectors // CLIPS_PER_VIDEO
            cases: list[tuple[str, ClipFilter, list[uuid.UUID]]] = []
            for name, count in shares.items():
                theirs = [c for c, o in owner_of.items() if o == users[name]]
                cases.append((f"owner {name} ({count:,} vectors)", ClipFilter(users[name]), theirs))
            everyone = list(by_clip)
            cases.append(("administrator, no filter", ClipFilter(None), everyone))
            video = rows[0]["video_id"]
            cases.append(("administrator, one video", ClipFilter(None, (video,)),
                          [r["id"] for r in rows if r["video_id"] == video]))
            window = max(1, n_videos // 100)
            cases.append((f"administrator, date window ({window} of {n_videos} videos)",
                          ClipFilter(None, created_after=EPOCH + timedelta(days=n_videos // 2),
                                     created_before=EPOCH + timedelta(days=n_videos // 2 + window)), everyone))
            cases.append(("administrator, clip duration 5-5 s (~5 %)",
                          ClipFilter(None, min_duration_s=5, max_duration_s=5), everyone))
            for label, where, pool in cases:
                targets = [by_clip[pool[i]] for i in rng.choice(len(pool), queries)]
                print(f"  {label:<52} {await _case(deployed, exact, where, targets, top_k, rng)}")
                if explain:
                    await _explain(db, where, targets[0], top_k)
        finally:
            await db.close()


async def _explain(db: object, where: ClipFilter, query: np.ndarray, top_k: int) -> None:
    """The deployed visual statement's plan for one query (EXPLAIN ANALYZE)."""
    from services.search import retrieval

    args: list[object] = [np.asarray(query, dtype=np.float32), MODEL, top_k]
    conditions = retrieval._Conditions(args).of(where, "x")
    sql = retrieval._VISUAL_SQL.format(where=conditions, order="x.embedding <=> $1")
    for row in await db.fetch("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql, *args):  # type: ignore[attr-defined]
        print("      " + re.sub(r"'\[[^\]]*\]'::vector", "$1", row[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=10, help="10: a page; 200: what Searcher asks per signal")
    parser.add_argument("--explain", action="store_true", help="print each case's plan once")
    parser.add_argument("--ef-search", type=int, help="hnsw.ef_search instead of the deployed setting")
    args = parser.parse_args()
    if args.ef_search:
        CONNECTION_SETTINGS["hnsw.ef_search"] = str(args.ef_search)
    print("search pool settings: " + ", ".join(f"{k}={v}" for k, v in CONNECTION_SETTINGS.items()))
    external = os.environ.get("CLIPMIND_TEST_DATABASE_URL")
    if external:
        asyncio.run(run(external, args.vectors, args.queries, args.top_k, args.explain))
        return
    state = Path(tempfile.mkdtemp(prefix="clipmind-bench-"))
    server = EmbeddedPostgres(state / "postgres", state / "postgres.log", free_port())
    server.start()
    try:
        asyncio.run(run(server.dsn, args.vectors, args.queries, args.top_k, args.explain))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
