"""A database from before the split (every table in ``public``, shared migrations 0001-0006: the fixture
tests/data/shared_schema_v6.sql) is adopted by provisioning: each service's tables move with their rows into
the service's schema and role, foreign keys between services are dropped, the shared outbox is divided, and
each service's later migrations carry on from there (real PostgreSQL + pgvector, a fresh database per test)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from services.common.db import Database
from services.common.db_provision import provision, role_name
from services.common.errors import FailedPrecondition
from services.search.clip_store import ClipStore
from services.search.ports import ClipFilter
from services.search.records import VideoFacts, VideoIndex
from services.search.retrieval import PgRetrieval
from services.search.vectors import PgVectorIndex
from tests.db_setup import ROLE_PASSWORDS, role_dsn, service_db
from tests.db_setup import fresh_database as new_database

pytestmark = pytest.mark.integration

SHARED_SCHEMA_V6 = Path(__file__).resolve().parents[1] / "data" / "shared_schema_v6.sql"
SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"


def migration_versions(service: str) -> list[int]:
    """Every migration the service ships (``NNNN_name.sql``): what its record must hold once it has started."""
    return sorted(int(p.name[:4]) for p in (SERVICES_DIR / service / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
SERVICES = ("ingest", "pipeline", "search")
# What each service owns once adopted and migrated to its latest version.
OWNED_TABLES = {
    "ingest": {"videos", "uploads", "outbox", "schema_migrations"},
    "pipeline": {"jobs", "job_events", "dead_letters", "outbox", "schema_migrations", "attempt_failures",
                 "compilations"},  # the last two made by migrations 0006 and 0007
    "search": {"clips", "keyframes", "transcript_segments", "transcript_vectors", "visual_vectors", "videos",
               "outbox", "schema_migrations"},
}
# The foreign keys that stay: those within one service's tables.
KEPT_FOREIGN_KEYS = {
    ("ingest", "uploads", "ingest", "videos"),
    ("pipeline", "job_events", "pipeline", "jobs"),
    ("pipeline", "dead_letters", "pipeline", "jobs"),
    ("pipeline", "attempt_failures", "pipeline", "jobs"),  # migration 0006
    ("pipeline", "jobs", "pipeline", "compilations"),  # migration 0007: a render job goes with its compilation
    ("search", "transcript_segments", "search", "clips"),
    ("search", "transcript_vectors", "search", "transcript_segments"),
    ("search", "keyframes", "search", "clips"),  # made by migration 0005, which gives each old clip its keyframe
    ("search", "visual_vectors", "search", "keyframes"),
}


def _vector(value: float, dims: int) -> str:
    return "'[" + ",".join([f"{value:g}"] * dims) + "]'::vector"


@pytest.fixture
async def fresh_database(pg_dsn: str) -> AsyncIterator[str]:
    """The DSN (as the session's administrator) of a new, empty database on the session's server, dropped after."""
    async with new_database(pg_dsn) as dsn:
        yield dsn


async def _load_shared_schema(conn: asyncpg.Connection) -> None:
    await conn.execute(SHARED_SCHEMA_V6.read_text())
    assert await conn.fetchval("SELECT max(version) FROM public.schema_migrations") == 6


async def _fill_shared_schema(conn: asyncpg.Connection) -> dict[str, Any]:
    """Rows of every kind the shared schema held; returns their ids."""
    ids: dict[str, Any] = {k: uuid.uuid4() for k in ("video", "idle_video", "upload", "job", "dead_letter", "search")}
    ids["clips"] = [uuid.uuid4(), uuid.uuid4()]
    ids["segments"] = [uuid.uuid4(), uuid.uuid4()]
    video = ids["video"]
    await conn.execute(
        "INSERT INTO videos (id, title, blob_key, state, duration_s, scene_count, transcript_model, visual_model) "
        "VALUES ($1, 'Harbour', $2, 'READY', 20.0, 2, 'sbert/legacy', 'clip/legacy'), ($3, 'Idle', $4, 'PENDING', "
        "0, 0, '', '')",
        video, f"videos/{video}/source.mp4", ids["idle_video"], f"videos/{ids['idle_video']}/source.mp4")
    await conn.execute("INSERT INTO uploads (id, filename, state, video_id, expire_time, size_bytes, committed_size) "
                       "VALUES ($1, 'harbour.mp4', 'COMPLETED', $2, now() + interval '1 day', 1234, 1234)",
                       ids["upload"], video)
    await conn.execute("INSERT INTO jobs (id, video_id, state, stage, progress, attempt, queue_key, fence) "
                       "VALUES ($1, $2, 'SUCCEEDED', 'INDEX', 1.0, 2, $3, 4)", ids["job"], video, f"{ids['job']}:1")
    await conn.executemany(
        "INSERT INTO job_events (job_id, sequence, stage, stage_state, progress, message, job_state) "
        "VALUES ($1, $2, 'INDEX', $3, $4, $5, $6)",
        [(ids["job"], 1, "RUNNING", 0.5, "indexing", "RUNNING"), (ids["job"], 2, "DONE", 1.0, "done", "SUCCEEDED")])
    await conn.execute("INSERT INTO dead_letters (id, job_id, video_id, failure_reason, attempts, failure_code) "
                       "VALUES ($1, $2, $3, 'worker lost', 1, 'WORKER_LOST')", ids["dead_letter"], ids["job"], video)
    for i, (clip, segment) in enumerate(zip(ids["clips"], ids["segments"], strict=True)):
        await conn.execute("INSERT INTO clips (id, video_id, idx, start_s, end_s, thumbnail_key) "
                           "VALUES ($1, $2, $3, $4, $5, $6)", clip, video, i, i * 10.0, i * 10.0 + 10, f"t/{i}.jpg")
        await conn.execute("INSERT INTO transcript_segments (id, video_id, clip_id, idx, start_s, end_s, text, source) "
                           "VALUES ($1, $2, $3, $4, $5, $6, $7, 'SIDECAR')",
                           segment, video, clip, i, i * 10.0 + 1, i * 10.0 + 2, f"words {i}")
        await conn.execute(f"INSERT INTO transcript_vectors (id, video_id, model, embedding) "
                           f"VALUES ($1, $2, 'sbert/legacy', {_vector(0.1 * (i + 1), 384)})", segment, video)
        await conn.execute(f"INSERT INTO visual_vectors (id, video_id, model, embedding) "
                           f"VALUES ($1, $2, 'clip/legacy', {_vector(0.1 * (i + 1), 512)})", clip, video)
    await conn.execute("INSERT INTO video_index_fences (video_id, fence) VALUES ($1, 4)", video)
    await conn.execute(
        "INSERT INTO outbox (topic, payload, attempts, last_error) VALUES "
        "('pipeline.submit_video_job', $1, 0, ''), ('analytics.log_searches', $2, 3, 'analytics down')",
        video.bytes, b"search-log-payload")
    await conn.execute("INSERT INTO searches (id, query, result_count, latency_ms) VALUES ($1, 'harbour', 2, 12.5)",
                       ids["search"])
    return ids


async def _service_pools(dsn: str) -> dict[str, Database]:
    """Each service's pool as its own role, its migrations applied (as the service does on start)."""
    pools: dict[str, Database] = {}
    try:
        for service in SERVICES:
            pools[service] = await service_db(role_dsn(dsn, service), service)
    except BaseException:
        for pool in pools.values():
            await pool.close()
        raise
    return pools


async def _snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    """Tables (with owners and row counts), constraints and recorded migrations of the database."""
    tables = await conn.fetch("SELECT schemaname, tablename, tableowner FROM pg_tables "
                              "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")
    counts = {(t["schemaname"], t["tablename"], t["tableowner"]):
              await conn.fetchval(f'SELECT count(*) FROM {t["schemaname"]}."{t["tablename"]}"') for t in tables}
    constraints = [tuple(r) for r in await conn.fetch(
        "SELECT n.nspname, c.conname, c.contype FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname IN ('public', 'ingest', 'pipeline', 'search') ORDER BY 1, 2")]
    migrations = {s: [tuple(r) for r in await conn.fetch(f"SELECT version, name FROM {s}.schema_migrations "
                                                         "ORDER BY version")]
                  for s in ("public", *SERVICES)}
    return {"counts": counts, "constraints": constraints, "migrations": migrations}


async def test_a_shared_schema_is_adopted_by_its_services(fresh_database: str) -> None:
    dsn = fresh_database
    admin = await asyncpg.connect(dsn)
    try:
        await _load_shared_schema(admin)
        ids = await _fill_shared_schema(admin)
        video = ids["video"]

        await provision(dsn, passwords=ROLE_PASSWORDS)
        pools = await _service_pools(dsn)
        try:
            ingest, pipeline, search = pools["ingest"], pools["pipeline"], pools["search"]

            # Every table is in its service's schema, owned by the service's role (its sequences too);
            # public keeps only the legacy search log and the shared record of migrations.
            for service, expected in OWNED_TABLES.items():
                owners = dict(await admin.fetch(
                    "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = $1", service))
                assert owners == dict.fromkeys(expected, role_name(service)), service
                sequences = await admin.fetch(
                    "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'S'", service)
                assert {s["relname"]: s["owner"] for s in sequences} == {"outbox_id_seq": role_name(service)}
            assert {r["tablename"] for r in await admin.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")} == {"searches", "schema_migrations"}
            assert await admin.fetchval("SELECT to_regclass('search.video_index_fences')") is None
            assert await admin.fetchval("SELECT to_regclass('public.video_index_fences')") is None

            # No foreign key crosses schemas; those within a service stay.
            fks = {tuple(r) for r in await admin.fetch(
                """SELECT n.nspname, t.relname, rn.nspname, r.relname FROM pg_constraint c
                     JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                     JOIN pg_class r ON r.oid = c.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
                    WHERE c.contype = 'f'""")}
            assert fks == KEPT_FOREIGN_KEYS

            # Migrations: each service's first is recorded as adopted, its later ones applied on start.
            for service in ("ingest", "pipeline", "search"):
                assert [r["version"] for r in await pools[service].fetch(
                    "SELECT version FROM schema_migrations ORDER BY version")] == migration_versions(service), service
            assert await admin.fetchval("SELECT count(*) FROM public.schema_migrations") == 6

            # Ingest: its rows, the columns of its 0002 and 0003 (rows from before owners are the nil UUID's:
            # administrators' only), and one facts row per video for the search service.
            rows = await ingest.fetch("SELECT id, title, state, generation, processing_fence, revision, owner_id "
                                      "FROM videos ORDER BY title")
            assert [tuple(r) for r in rows] == [(video, "Harbour", "READY", 1, 0, 1, uuid.UUID(int=0)),
                                                (ids["idle_video"], "Idle", "PENDING", 1, 0, 1, uuid.UUID(int=0))]
            upload = await ingest.fetchrow("SELECT video_id, state, committed_size, owner_id FROM uploads "
                                           "WHERE id = $1", ids["upload"])
            assert tuple(upload or ()) == (video, "COMPLETED", 1234, uuid.UUID(int=0))
            outbox = await ingest.fetch("SELECT topic, payload FROM outbox ORDER BY id")
            assert [r["topic"] for r in outbox] == ["pipeline.submit_video_job", "search.video_facts",
                                                    "search.video_facts"]
            assert bytes(outbox[0]["payload"]) == video.bytes
            assert {bytes(r["payload"]).decode() for r in outbox[1:]} == {str(video), str(ids["idle_video"])}
            assert not any(r["topic"].startswith("analytics.") for r in outbox)
            await ingest.execute("INSERT INTO outbox (topic, payload) VALUES ('probe', '')")  # its sequence is usable

            # Pipeline: the job, its events and its dead letter.
            job = await pipeline.fetchrow("SELECT video_id, state, attempt, queue_key, fence FROM jobs WHERE id = $1",
                                          ids["job"])
            assert tuple(job or ()) == (video, "SUCCEEDED", 2, f"{ids['job']}:1", 4)
            assert [tuple(r) for r in await pipeline.fetch(
                "SELECT sequence, stage_state, job_state FROM job_events WHERE job_id = $1 ORDER BY sequence",
                ids["job"])] == [(1, "RUNNING", "RUNNING"), (2, "DONE", "SUCCEEDED")]
            dead = await pipeline.fetchrow("SELECT job_id, video_id, failure_code FROM dead_letters WHERE id = $1",
                                           ids["dead_letter"])
            assert tuple(dead or ()) == (ids["job"], video, "WORKER_LOST")
            assert await pipeline.fetchval("SELECT count(*) FROM outbox") == 0

            # Search: the index with its vectors, the fence in its read model, the analytics row in its outbox.
            assert [tuple(r) for r in await search.fetch(
                "SELECT id, idx, thumbnail_key FROM clips WHERE video_id = $1 ORDER BY idx", video)] == [
                (ids["clips"][0], 0, "t/0.jpg"), (ids["clips"][1], 1, "t/1.jpg")]
            assert [tuple(r) for r in await search.fetch(
                "SELECT id, clip_id, text FROM transcript_segments WHERE video_id = $1 ORDER BY idx", video)] == [
                (ids["segments"][0], ids["clips"][0], "words 0"), (ids["segments"][1], ids["clips"][1], "words 1")]
            vectors = PgVectorIndex(search)
            model, stored = await vectors.get("transcript", ids["segments"][1]) or ("", np.zeros(0))
            assert model == "sbert/legacy" and stored.shape == (384,)
            np.testing.assert_allclose(stored, 0.2, rtol=1e-6)
            model, stored = await vectors.get("visual", ids["clips"][0]) or ("", np.zeros(0))
            assert model == "clip/legacy" and stored.shape == (512,)
            np.testing.assert_allclose(stored, 0.1, rtol=1e-6)
            read_model = await search.fetchrow("SELECT index_fence, revision, deleted FROM videos WHERE id = $1",
                                               video)
            assert tuple(read_model or ()) == (4, 0, False)
            assert await search.fetchval("SELECT count(*) FROM videos") == 1  # the idle video's facts come later
            moved = await search.fetch("SELECT topic, payload, attempts, last_error FROM outbox")
            assert [(r["topic"], bytes(r["payload"]), r["attempts"], r["last_error"]) for r in moved] == [
                ("analytics.log_searches", b"search-log-payload", 3, "analytics down")]

            # The adopted index works as the search service's own: fenced by the old fence, searchable once
            # ingest's facts arrive.
            clips = ClipStore(search)
            assert await clips.get_many(ids["clips"], owner=None) == {}
            with pytest.raises(FailedPrecondition) as superseded:
                await clips.replace_index(video, 3, VideoIndex([], []), owner=uuid.uuid4())
            assert superseded.value.reason == "RUN_SUPERSEDED"
            assert await clips.upsert_facts(VideoFacts(video, 1, "Harbour", f"videos/{video}/source.mp4", "READY",
                                                       20.0, None))
            found = await clips.get_many(ids["clips"], owner=None)
            assert set(found) == set(ids["clips"]) and found[ids["clips"][1]].transcript == "words 1"
            retrieval = PgRetrieval(search)
            hits = await retrieval.visual("clip/legacy", np.full(512, 0.1, np.float32), 2, ClipFilter(None, (video,)))
            assert {h.clip_id for h in hits} == set(ids["clips"])
            lexical = await retrieval.lexical("words", 2, ClipFilter(None))  # adopted cues are indexed for words
            assert {h.clip_id for h in lexical} == set(ids["clips"])
            # Rows from before ownership are nobody's (the nil UUID): administrators find them, users do not.
            for table in ("videos", "clips", "keyframes", "transcript_segments", "transcript_vectors",
                          "visual_vectors"):
                assert await search.fetchval(f"SELECT count(DISTINCT owner_id) FROM {table} "
                                             "WHERE owner_id <> '00000000-0000-0000-0000-000000000000'") == 0, table
            assert await clips.get_many(ids["clips"], owner=uuid.uuid4()) == {}

            # The legacy search log stays where it was.
            search_row = await admin.fetchrow("SELECT query, result_count FROM public.searches WHERE id = $1",
                                              ids["search"])
            assert tuple(search_row or ()) == ("harbour", 2)

            # Provisioning again changes nothing.
            before = await _snapshot(admin)
            await provision(dsn, passwords=ROLE_PASSWORDS)
            assert await _snapshot(admin) == before
            again = await _service_pools(dsn)  # and the services start again as they are
            try:
                versions = {s: await p.fetchval("SELECT max(version) FROM schema_migrations") for s, p in again.items()}
            finally:
                for pool in again.values():
                    await pool.close()
            assert versions == {s: migration_versions(s)[-1] for s in ("ingest", "pipeline", "search")}
            assert await _snapshot(admin) == before
        finally:
            for pool in pools.values():
                await pool.close()

        # Each role is refused on the other services' tables and on the legacy ones left in public.
        for me, other in itertools.permutations(SERVICES, 2):
            conn = await asyncpg.connect(role_dsn(dsn, me))
            try:
                for table in sorted(OWNED_TABLES[other]):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.fetch(f"SELECT 1 FROM {other}.{table} LIMIT 1")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(f"DELETE FROM {other}.outbox")
                for table in ("searches", "schema_migrations"):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.fetch(f"SELECT 1 FROM public.{table} LIMIT 1")
            finally:
                await conn.close()
    finally:
        await admin.close()


async def test_a_shared_schema_before_its_last_migration_is_not_adopted(fresh_database: str) -> None:
    dsn = fresh_database
    admin = await asyncpg.connect(dsn)
    try:
        await _load_shared_schema(admin)
        # The shared schema at version 5: a release from before the split that never finished its migrations.
        await admin.execute("DROP TABLE video_index_fences; ALTER TABLE jobs DROP COLUMN fence; "
                            "DELETE FROM schema_migrations WHERE version = 6")
        ids = await _fill_shared_schema_v5(admin)
        foreign_keys = await _foreign_keys(admin)

        with pytest.raises(RuntimeError, match="migration 5"):
            await provision(dsn, passwords=ROLE_PASSWORDS)

        assert await admin.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = ANY($1::text[])",
                                    list(SERVICES)) == 0  # nothing moved
        for table in ("videos", "uploads", "jobs", "clips", "outbox", "searches", "schema_migrations"):
            assert await admin.fetchval(f"SELECT to_regclass('public.{table}')") is not None, table
        assert await admin.fetchval("SELECT title FROM public.videos WHERE id = $1", ids["video"]) == "Harbour"
        assert await admin.fetchval("SELECT count(*) FROM public.clips WHERE video_id = $1", ids["video"]) == 1
        assert [r["topic"] for r in await admin.fetch("SELECT topic FROM public.outbox ORDER BY id")] == [
            "pipeline.submit_video_job", "analytics.log_searches"]
        assert await admin.fetchval("SELECT max(version) FROM public.schema_migrations") == 5
        assert await _foreign_keys(admin) == foreign_keys  # every reference of the shared schema kept
        assert len(foreign_keys) == 12
    finally:
        await admin.close()


async def _foreign_keys(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    return [tuple(r) for r in await conn.fetch(
        "SELECT n.nspname, c.conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE c.contype = 'f' ORDER BY 1, 2")]


async def _fill_shared_schema_v5(conn: asyncpg.Connection) -> dict[str, uuid.UUID]:
    ids = {"video": uuid.uuid4(), "clip": uuid.uuid4()}
    await conn.execute("INSERT INTO videos (id, title, blob_key, state) VALUES ($1, 'Harbour', 'b', 'READY')",
                       ids["video"])
    await conn.execute("INSERT INTO clips (id, video_id, idx, start_s, end_s) VALUES ($1, $2, 0, 0, 10)",
                       ids["clip"], ids["video"])
    await conn.execute("INSERT INTO outbox (topic, payload) VALUES ('pipeline.submit_video_job', ''), "
                       "('analytics.log_searches', '')")
    return ids
