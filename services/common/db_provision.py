"""Provisioning: a PostgreSQL schema and a login role per service, and the grants that keep them apart.

Each service owns its tables: they live in the service's schema, owned by the service's role, and no other
role has any privilege on that schema, so a service that reads or writes another's tables fails with
"permission denied" instead of quietly coupling the two (other services' data is reached over gRPC). The
embedded default runs every service on one PostgreSQL server; in production each service may get a
database (or a server) of its own and only its URL changes.

Provisioning needs an administrator (the embedded server's superuser; in production a DBA runs
``clipmind db-provision`` with an admin URL once). It is idempotent: roles, schemas and grants that exist
are kept. Extensions (pgvector) are created here too, in ``public``, because creating them needs more
privilege than a service role has.

A database from before the split (every table in ``public``, migrated by the shared migrations 0001-0006)
is adopted on the way (``adopt_shared_schema``): each table moves, with its rows, indexes and sequences, into
the schema of the service that owns it and to that service's role; foreign keys between services are dropped
(those references are kept by internal calls now); each service's first migration, which describes exactly
these tables, is recorded as applied, so its later migrations carry on from there. The legacy search log
(``public.searches``, no longer written) and ``public.schema_migrations`` stay where they are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from services.common.db import SCHEMA_MIGRATIONS_DDL, check_schema
from services.common.outbox import OUTBOX_DDL

T = TypeVar("T")

# Every service that owns data: its schema and its role have its name.
OWNED_SCHEMAS: tuple[str, ...] = ("ingest", "pipeline", "search", "analytics", "identity")


# The tables of the schema every service shared before the split, by the service that owns them now.
SHARED_SCHEMA_TABLES: dict[str, tuple[str, ...]] = {
    "ingest": ("videos", "uploads", "outbox"),
    "pipeline": ("jobs", "job_events", "dead_letters"),
    "search": ("clips", "transcript_segments", "transcript_vectors", "visual_vectors", "video_index_fences"),
}
SHARED_SCHEMA_VERSION = 6  # the last shared migration (0006_index_fences)
# Outbox topics the search service wrote into the shared outbox (ingest's topics stay with the table).
_SEARCH_TOPICS = "analytics.log_searches"


def role_name(service: str) -> str:
    return f"clipmind_{check_schema(service)}"


def service_dsn(admin_dsn: str, service: str, password: str | None = None) -> str:
    """The DSN of ``service``'s role on the database of ``admin_dsn`` (same host, port and database)."""
    parts = urlsplit(admin_dsn)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = quote(role_name(service), safe="")
    if password:
        netloc += ":" + quote(password, safe="")
    netloc += f"@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def provision(admin_dsn: str, services: Sequence[str] = OWNED_SCHEMAS, *,
                    passwords: dict[str, str] | None = None, extensions: Sequence[str] = ("vector",)) -> None:
    """Create (or keep) each service's role and schema, owned by the role and closed to everyone else."""
    conn = await asyncpg.connect(admin_dsn, timeout=30)
    try:
        for extension in extensions:
            await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {check_schema(extension)} SCHEMA public")
        database = await conn.fetchval("SELECT current_database()")
        for service in services:
            role, schema = role_name(service), check_schema(service)
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role):
                await conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
            password = (passwords or {}).get(service)
            if password:
                # A utility statement takes no parameters; the literal is quoted by PostgreSQL's own quote_literal.
                literal = await conn.fetchval("SELECT quote_literal($1)", password)
                await conn.execute(f"ALTER ROLE {role} PASSWORD {literal}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}")
            await conn.execute(f"ALTER SCHEMA {schema} OWNER TO {role}")
            await conn.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
            await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {role}')
            await conn.execute(f"ALTER ROLE {role} SET search_path = {schema}, public")
        await adopt_shared_schema(conn)
    finally:
        await conn.close()


async def adopt_shared_schema(conn: asyncpg.Connection) -> bool:
    """Move the tables of a database from before the split into their services' schemas (see the module
    docstring); False when there is nothing to adopt. One transaction: all or nothing. The schemas and roles
    of ``SHARED_SCHEMA_TABLES`` must be provisioned already."""
    if await conn.fetchval("SELECT to_regclass('public.videos')") is None:
        return False
    version = await conn.fetchval(
        "SELECT max(version) FROM public.schema_migrations"
        if await conn.fetchval("SELECT to_regclass('public.schema_migrations')") is not None else "SELECT NULL")
    if version != SHARED_SCHEMA_VERSION:
        raise RuntimeError(
            f"public.videos exists, but the shared schema is at migration {version}, not {SHARED_SCHEMA_VERSION}: "
            "start the release from before the split once to finish its migrations, then this one")
    async with conn.transaction():
        for service, tables in SHARED_SCHEMA_TABLES.items():
            if await conn.fetchval(f"SELECT to_regclass('{check_schema(service)}.{tables[0]}')") is not None:
                raise RuntimeError(f"both public.{tables[0]} and {service}.{tables[0]} exist: adopt by hand")
            for table in tables:
                await conn.execute(f"ALTER TABLE public.{table} SET SCHEMA {service}")
                await conn.execute(f"ALTER TABLE {service}.{table} OWNER TO {role_name(service)}")
        # References between services' tables (jobs → videos, clips → videos, ...) are the services' business
        # now: deletions travel over internal calls.
        crossing = await conn.fetch(
            """SELECT c.conname, n.nspname AS schema, t.relname AS table FROM pg_constraint c
                 JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                 JOIN pg_class r ON r.oid = c.confrelid
                WHERE c.contype = 'f' AND t.relnamespace <> r.relnamespace AND n.nspname = ANY($1::text[])""",
            list(SHARED_SCHEMA_TABLES),
        )
        for fk in crossing:
            await conn.execute(f'ALTER TABLE {fk["schema"]}.{fk["table"]} DROP CONSTRAINT "{fk["conname"]}"')
        for service in ("pipeline", "search"):  # the shared outbox went to ingest; these get their own
            await conn.execute(f"SET LOCAL search_path TO {service}")
            await conn.execute(OUTBOX_DDL)
            await conn.execute(f"ALTER TABLE {service}.outbox OWNER TO {role_name(service)}")
        await conn.execute(
            """WITH moved AS (DELETE FROM ingest.outbox WHERE topic LIKE $1 RETURNING *)
               INSERT INTO search.outbox (topic, payload, create_time, attempts, next_attempt_time, last_error)
               SELECT topic, payload, create_time, attempts, next_attempt_time, last_error FROM moved ORDER BY id""",
            _SEARCH_TOPICS,
        )
        for service in SHARED_SCHEMA_TABLES:
            await conn.execute(f"SET LOCAL search_path TO {service}")
            await conn.execute(SCHEMA_MIGRATIONS_DDL)
            await conn.execute(f"ALTER TABLE {service}.schema_migrations OWNER TO {role_name(service)}")
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (1, 'adopted from the shared schema') "
                "ON CONFLICT (version) DO NOTHING")
    return True


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, also when an event loop is already running in this
    thread (the launcher is called from both)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
