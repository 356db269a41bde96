"""Each service's database role owns its schema and is refused on every other service's schema."""

from __future__ import annotations

import itertools
from pathlib import Path

import asyncpg
import pytest

from services.common.db import create_pool
from services.common.db_provision import provision, role_name, service_dsn

pytestmark = pytest.mark.integration

SERVICES = ("ingest", "pipeline", "search", "analytics")
ANALYTICS_MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "analytics" / "migrations"


@pytest.fixture
async def provisioned(pg_dsn: str) -> str:
    await provision(pg_dsn, SERVICES)
    await provision(pg_dsn, SERVICES)  # idempotent: a second run changes nothing and does not fail
    admin = await asyncpg.connect(pg_dsn)
    try:
        for service in SERVICES:  # one table per schema, made by its owner, to be refused to the others
            conn = await asyncpg.connect(service_dsn(pg_dsn, service))
            try:
                await conn.execute("CREATE TABLE IF NOT EXISTS owned_here (id integer PRIMARY KEY)")
                assert await conn.fetchval("SELECT current_schema()") == service
            finally:
                await conn.close()
        owners = dict(await admin.fetch(
            "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = ANY($1::text[])",
            list(SERVICES)))
        assert owners == {s: role_name(s) for s in SERVICES}
    finally:
        await admin.close()
    return pg_dsn


async def test_each_role_is_refused_on_every_other_schema(provisioned: str) -> None:
    for me, other in itertools.permutations(SERVICES, 2):
        conn = await asyncpg.connect(service_dsn(provisioned, me))
        try:
            await conn.execute(f"INSERT INTO {me}.owned_here VALUES (1) ON CONFLICT DO NOTHING")  # its own: fine
            for statement in (f"SELECT * FROM {other}.owned_here", f"INSERT INTO {other}.owned_here VALUES (2)",
                              f"CREATE TABLE {other}.intruder (id integer)", f"DROP TABLE {other}.owned_here"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        finally:
            await conn.close()


async def test_a_role_cannot_touch_the_shared_legacy_tables(provisioned: str) -> None:
    """Services not moved to their own schema yet keep their tables in public, owned by the admin: a service
    with its own role (analytics) reads none of them."""
    admin = await asyncpg.connect(provisioned)
    try:
        await admin.execute("CREATE TABLE IF NOT EXISTS public.legacy_probe (id integer)")
    finally:
        await admin.close()
    conn = await asyncpg.connect(service_dsn(provisioned, "analytics"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM public.legacy_probe")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE public.intruder (id integer)")
    finally:
        await conn.close()


async def test_a_service_migrates_its_own_schema_under_its_own_role(provisioned: str) -> None:
    db = await create_pool(service_dsn(provisioned, "analytics"), migrations=ANALYTICS_MIGRATIONS, schema="analytics")
    try:
        rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'analytics'")
        tables = {r["tablename"] for r in rows}
        assert {"searches", "search_results", "schema_migrations"} <= tables
        assert await db.fetchval("SELECT count(*) FROM searches") >= 0  # unqualified SQL finds its own schema
    finally:
        await db.close()
