"""Each service's database role owns its schema, migrates it, and is refused on every other service's schema.

On a database of its own (other tests make the services' schemas as the admin in the session's database)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.cli import main
from services.common.db import create_pool
from services.common.db_provision import OWNED_SCHEMAS, provision, role_name, service_dsn
from tests.db_setup import ROLE_PASSWORDS, SERVICE_SCHEMAS, fresh_database, role_dsn

pytestmark = pytest.mark.integration

SERVICES = ("ingest", "pipeline", "search", "analytics", "identity")


@pytest.fixture(scope="module")
async def provisioned(pg_dsn: str) -> AsyncIterator[str]:
    """A database provisioned as the mesh does it, each service's migrations applied under its own role."""
    async with fresh_database(pg_dsn) as dsn:
        await provision(dsn, passwords=ROLE_PASSWORDS)
        await provision(dsn, passwords=ROLE_PASSWORDS)  # idempotent: a second run changes nothing and does not fail
        for service in SERVICES:
            migrations, schema = SERVICE_SCHEMAS[service]
            db = await create_pool(role_dsn(dsn, service), migrations=migrations, schema=schema,
                                   vectors=service == "search")
            await db.close()
        yield dsn


async def test_every_service_owns_a_schema() -> None:
    assert set(OWNED_SCHEMAS) == set(SERVICES)


async def test_each_service_migrates_its_own_schema_under_its_own_role(provisioned: str) -> None:
    admin = await asyncpg.connect(provisioned)
    try:
        owners = dict(await admin.fetch(
            "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = ANY($1::text[])",
            list(SERVICES)))
        assert owners == {s: role_name(s) for s in SERVICES}
        tables = {(r["schemaname"], r["tablename"]): r["tableowner"] for r in await admin.fetch(
            "SELECT schemaname, tablename, tableowner FROM pg_tables WHERE schemaname = ANY($1::text[])",
            list(SERVICES))}
        assert all(owner == role_name(schema) for (schema, _), owner in tables.items())  # every table its own
        expected = {"ingest": {"videos", "uploads", "outbox"}, "pipeline": {"jobs", "job_events", "dead_letters",
                    "outbox"}, "search": {"clips", "keyframes", "transcript_segments", "transcript_vectors",
                    "visual_vectors", "videos", "outbox"}, "analytics": {"searches", "search_results"},
                    "identity": {"users", "refresh_tokens", "api_keys", "revoked_access_tokens"}}
        for schema, names in expected.items():
            assert names | {"schema_migrations"} <= {t for s, t in tables if s == schema}
        # Nothing references another service's tables: those references are kept over gRPC.
        crossing = await admin.fetchval(
            """SELECT count(*) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
                JOIN pg_class r ON r.oid = c.confrelid WHERE c.contype = 'f' AND t.relnamespace <> r.relnamespace""")
        assert crossing == 0
    finally:
        await admin.close()


async def test_each_role_is_refused_on_every_other_schema(provisioned: str) -> None:
    for me, other in itertools.permutations(SERVICES, 2):
        conn = await asyncpg.connect(role_dsn(provisioned, me))
        try:
            assert await conn.fetchval("SELECT current_schema()") == me
            await conn.fetchval("SELECT count(*) FROM schema_migrations")  # its own: unqualified SQL finds it
            for statement in (f"SELECT * FROM {other}.schema_migrations",
                              f"INSERT INTO {other}.schema_migrations (version, name) VALUES (999, 'x')",
                              f"CREATE TABLE {other}.intruder (id integer)", f"DROP TABLE {other}.schema_migrations",
                              f"ALTER SCHEMA {other} RENAME TO stolen"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        finally:
            await conn.close()


async def test_a_role_cannot_touch_public(provisioned: str) -> None:
    """Only extensions live in public: a service role can use them but put nothing there."""
    for service in SERVICES:
        conn = await asyncpg.connect(role_dsn(provisioned, service))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE public.intruder (id integer)")
        finally:
            await conn.close()


async def test_db_provision_command_prints_each_services_url(
    pg_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service, password in ROLE_PASSWORDS.items():  # passwords come from the environment, never the output
        monkeypatch.setenv(f"CLIPMIND_DB_PASSWORD_{service.upper()}", password)
    async with fresh_database(pg_dsn) as dsn:
        assert main(["db-provision", "--admin-url", dsn]) == 0
        out = capsys.readouterr().out
        for service in SERVICES:
            assert f"CLIPMIND_DATABASE_URL={service_dsn(dsn, service)}" in out
            assert ROLE_PASSWORDS[service] not in out
        conn = await asyncpg.connect(role_dsn(dsn, "ingest"))  # the role exists and logs in to its schema
        try:
            assert await conn.fetchval("SELECT current_schema()") == "ingest"
        finally:
            await conn.close()
