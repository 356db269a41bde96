"""Search analytics at volume: report latency over 30 days of synthetic searches, and RecordInteraction
throughput.

Starts an embedded PostgreSQL, applies the analytics migrations, and loads ``--searches`` searches (default
1,000,000) spread evenly over 30 days by COPY: 1,000 users (a few heavy, most light: Zipf), 20,000 distinct
queries (Zipf, written in several spellings that normalize alike), 5 % with no results, ~30 % clicked (the
first click at rank 1-5, skewed to the top), latencies log-normal around 40 ms; with one interaction row per
search (an impression of its first result, or its click). Then, in one run, each report through the service's
own code (``reports.Reports``, what the servicer calls), median and p95 of ``--repeats`` calls:

* GetSearchStats over the 30 days (whole hours from the rollups, the partial first and last hours from the raw
  rows: the window starts and ends at half past): everyone's (an administrator), and the heaviest user's;
* ListPopularQueries (first page of 20): everyone's, and the heaviest user's;
* ListPopularClips (first page of 20): everyone's;

and RecordInteraction (``interactions.InteractionStore.record``: a click, checked against its search, counted
on it) from ``--concurrency`` tasks for ``--seconds``: interactions per second.

Usage: ``--usage-events`` facts (default 200,000: uploads, processing runs, videos ready, deletions, the users'
Zipf again) over the same 30 days, recorded through ``usage.UsageStore.record`` in batches of 500 as the outbox
relays deliver them (events per second), then GetUsage (``UsageStore.report``, what the servicer calls) over the
30 days: everyone's, everyone's per day, the heaviest user's per day.

    .venv/bin/python bench/analytics.py [--searches 1000000] [--usage-events 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen/python")]

from services.analytics.interactions import InteractionStore, NewInteraction  # noqa: E402
from services.analytics.reports import Reports  # noqa: E402
from services.analytics.search_log import MIGRATIONS, SCHEMA  # noqa: E402
from services.analytics.usage import KINDS, UsageEvent, UsageStore  # noqa: E402
from services.common.db import create_pool  # noqa: E402
from services.launcher.postgres import EmbeddedPostgres  # noqa: E402
from services.launcher.process import free_port  # noqa: E402

DAYS = 30
USERS = 1_000
QUERIES = 20_000
BATCH = 100_000


async def load(dsn: str, searches: int) -> tuple[float, uuid.UUID, datetime]:
    """Load the synthetic log; returns (seconds, the heaviest user, the window's start)."""
    import asyncpg

    rng = np.random.default_rng(12)
    users = [uuid.uuid4() for _ in range(USERS)]
    start = datetime(2026, 10, 1, tzinfo=UTC)
    span_s = DAYS * 86_400
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn, server_settings={"search_path": f"{SCHEMA}, public"})
    try:
        for first in range(0, searches, BATCH):
            n = min(BATCH, searches - first)
            who = np.minimum(rng.zipf(1.3, n) - 1, USERS - 1)
            query_ids = np.minimum(rng.zipf(1.2, n) - 1, QUERIES - 1)
            at = np.sort(rng.uniform(first / searches, (first + n) / searches, n)) * span_s
            latency = rng.lognormal(np.log(40), 0.5, n)
            zero = rng.random(n) < 0.05
            clicked = (rng.random(n) < 0.3) & ~zero
            first_rank = np.minimum(rng.geometric(0.5, n), 5)
            searches_rows, results, interactions = [], [], []
            for i in range(n):
                sid, text = uuid.uuid4(), f"query number {query_ids[i]}"
                spelled = text.upper() if i % 3 == 0 else (f"  {text} " if i % 3 == 1 else text)
                when = start + timedelta(seconds=float(at[i]))
                clip = uuid.UUID(int=int(query_ids[i]) * 10 + int(first_rank[i]))
                searches_rows.append((sid, spelled, " ".join(spelled.split()).casefold(), 0 if zero[i] else 10,
                                      float(latency[i]), when, users[who[i]], "weighted",
                                      1 if clicked[i] else 0, int(first_rank[i]) if clicked[i] else None))
                if not zero[i]:
                    results.append((sid, int(first_rank[i]), clip, uuid.UUID(int=int(query_ids[i])), 1.0))
                    interactions.append((uuid.uuid4(), users[who[i]], sid, clip,
                                         "CLICK" if clicked[i] else "IMPRESSION", int(first_rank[i]), when))
            await conn.copy_records_to_table("searches", records=searches_rows, columns=[
                "id", "query", "normalized_query", "result_count", "latency_ms", "search_time", "user_id", "fusion",
                "click_count", "first_click_rank"])
            await conn.copy_records_to_table("search_results", records=results, columns=[
                "search_id", "rank", "clip_id", "video_id", "score"])
            await conn.copy_records_to_table("interactions", records=interactions, columns=[
                "id", "user_id", "search_id", "clip_id", "type", "rank", "create_time"])
        # The rollups logging and clicking keep (migration 0003), made at once for the loaded rows.
        clicks = ("count(*) FILTER (WHERE first_click_rank IS NOT NULL), "
                  "coalesce(sum(1.0 / first_click_rank), 0)")
        clip_counts = ("count(*) FILTER (WHERE type = 'CLICK'), count(*) FILTER (WHERE type = 'IMPRESSION'), "
                       "count(*) FILTER (WHERE type = 'PLAY'), coalesce(sum(watched_seconds), 0)")

        def day(column: str) -> str:
            return f"({column} AT TIME ZONE 'UTC')::date"

        for sql in (
            f"INSERT INTO search_hours SELECT user_id, date_trunc('hour', search_time, 'UTC'), count(*), "
            f"count(*) FILTER (WHERE result_count = 0), {clicks} FROM searches GROUP BY 1, 2",
            f"INSERT INTO search_hours_all SELECT date_trunc('hour', search_time, 'UTC'), count(*), "
            f"count(*) FILTER (WHERE result_count = 0), {clicks} FROM searches GROUP BY 1",
            "INSERT INTO latency_hours SELECT user_id, date_trunc('hour', search_time, 'UTC'), "
            "latency_bucket(latency_ms), count(*) FROM searches GROUP BY 1, 2, 3",
            "INSERT INTO latency_hours_all SELECT date_trunc('hour', search_time, 'UTC'), latency_bucket(latency_ms), "
            "count(*) FROM searches GROUP BY 1, 2",
            f"INSERT INTO query_days SELECT user_id, {day('search_time')}, normalized_query, count(*), "
            f"sum(click_count), count(*) FILTER (WHERE click_count > 0), count(*) FILTER (WHERE result_count = 0) "
            "FROM searches WHERE normalized_query <> '' GROUP BY 1, 2, 3",
            f"INSERT INTO query_days_all SELECT {day('search_time')}, normalized_query, count(*), sum(click_count), "
            "count(*) FILTER (WHERE click_count > 0), count(*) FILTER (WHERE result_count = 0) "
            "FROM searches WHERE normalized_query <> '' GROUP BY 1, 2",
            f"INSERT INTO clip_days SELECT user_id, {day('create_time')}, clip_id, {clip_counts} "
            "FROM interactions GROUP BY 1, 2, 3",
            f"INSERT INTO clip_days_all SELECT {day('create_time')}, clip_id, {clip_counts} "
            "FROM interactions GROUP BY 1, 2",
        ):
            await conn.execute(sql, timeout=3600)
        await conn.execute("VACUUM ANALYZE", timeout=3600)
        heaviest = await conn.fetchval("SELECT user_id FROM searches GROUP BY user_id ORDER BY count(*) DESC LIMIT 1")
    finally:
        await conn.close()
    return time.perf_counter() - started, heaviest, start


async def load_usage(store: UsageStore, users: list[uuid.UUID], start: datetime, events: int) -> float:
    """Record ``events`` usage facts of ``users`` (the heaviest first, Zipf) over the 30 days through the store, in
    batches of 500 as a relay would; returns events per second."""
    rng = np.random.default_rng(13)
    weights = [0.3, 0.3, 0.25, 0.1, 0.05]  # uploads, runs, ready, deletions, compilations (as KINDS orders them)
    kinds = [KINDS.index(k) for k in ("VIDEO_UPLOADED", "PROCESSING_RUN", "VIDEO_PROCESSED", "VIDEO_DELETED",
                                      "COMPILATION_RENDERED")]
    t0 = time.perf_counter()
    for first in range(0, events, 500):
        n = min(500, events - first)
        who = np.minimum(rng.zipf(1.3, n) - 1, len(users) - 1)
        kind = rng.choice(kinds, n, p=weights)
        at = np.sort(rng.uniform(first / events, (first + n) / events, n)) * DAYS * 86_400
        await store.record([
            UsageEvent(uuid.uuid4(), users[who[i]], KINDS[kind[i]], start + timedelta(seconds=float(at[i])),
                       uuid.uuid4(), int(rng.integers(1, 2**31)), float(rng.uniform(1, 600)))
            for i in range(n)])
    return events / (time.perf_counter() - t0)


async def timed(call: Callable[[], Awaitable[Any]], repeats: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]


async def measure(dsn: str, searches: int, repeats: int, seconds: float, concurrency: int, usage_events: int) -> None:
    took, heaviest, start = await load(dsn, searches)
    print(f"{searches:,} searches over {DAYS} days loaded in {took:.0f} s")
    pool = await create_pool(dsn, migrations=MIGRATIONS, schema=SCHEMA, max_size=concurrency + 2)
    try:
        reports, usage = Reports(pool), UsageStore(pool)
        users = [heaviest, *[r["user_id"] for r in await pool.fetch(
            "SELECT user_id FROM searches WHERE user_id <> $1 GROUP BY user_id ORDER BY count(*) DESC", heaviest)]]
        rate = await load_usage(usage, users, start, usage_events)
        await pool.execute("VACUUM ANALYZE usage_events, usage_days")
        print(f"{usage_events:,} usage events recorded (RecordUsage's store, batches of 500): {rate:,.0f} per second")
        start, end = start + timedelta(minutes=30), start + timedelta(days=DAYS, minutes=30)
        own = await pool.fetchval("SELECT count(*) FROM searches WHERE user_id = $1", heaviest)
        cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("GetSearchStats, everyone, 30 days", lambda: reports.search_stats(start, end, None)),
            (f"GetSearchStats, heaviest user ({own:,} searches)", lambda: reports.search_stats(start, end, heaviest)),
            ("ListPopularQueries, everyone, first 20",
             lambda: reports.popular_queries(start, end, None, offset=0, limit=21)),
            ("ListPopularQueries, heaviest user, first 20",
             lambda: reports.popular_queries(start, end, heaviest, offset=0, limit=21)),
            ("ListPopularClips, everyone, first 20",
             lambda: reports.popular_clips(start, end, None, offset=0, limit=21)),
            ("GetUsage, everyone, 30 days", lambda: usage.report(start, end, None, None)),
            ("GetUsage, everyone, 30 days per day", lambda: usage.report(start, end, None, "day")),
            ("GetUsage, heaviest user, 30 days per day", lambda: usage.report(start, end, heaviest, "day")),
        ]
        for label, call in cases:
            await call()  # warm
            p50, p95 = await timed(call, repeats)
            print(f"  {label:<52} p50 {p50:8.1f} ms  p95 {p95:8.1f} ms")

        store = InteractionStore(pool, search_wait_s=0)
        targets = await pool.fetch("SELECT r.search_id, r.clip_id, s.user_id FROM search_results r "
                                   "JOIN searches s ON s.id = r.search_id LIMIT 20000")
        done = 0
        stop_at = time.perf_counter() + seconds

        async def clicker(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop_at:
                t = targets[i % len(targets)]
                await store.record(NewInteraction(t["user_id"], t["search_id"], t["clip_id"], "CLICK",
                                                  request_id=f"bench-{k}-{i}"))
                done += 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(clicker(k) for k in range(concurrency)))
        rate = done / (time.perf_counter() - t0)
        print(f"  RecordInteraction (click, checked and counted), {concurrency} tasks: {rate:,.0f} per second")
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--usage-events", type=int, default=200_000)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="clipmind-bench-analytics-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", Path(tmp) / "pg.log", free_port())
        server.start()
        try:
            asyncio.run(_prepare_and_measure(server.dsn, args))
        finally:
            server.stop()


async def _prepare_and_measure(dsn: str, args: argparse.Namespace) -> None:
    pool = await create_pool(dsn, migrations=MIGRATIONS, schema=SCHEMA)  # the schema, as the service makes it
    await pool.close()
    await measure(dsn, args.searches, args.repeats, args.seconds, args.concurrency, args.usage_events)


if __name__ == "__main__":
    main()
