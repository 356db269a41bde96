"""Provisioning: a PostgreSQL schema and a login role per service, and the grants that keep them apart.

Each service owns its tables: they live in the service's schema, owned by the service's role, and no other
role has any privilege on that schema, so a service that reads or writes another's tables fails with
"permission denied" instead of quietly coupling the two (other services' data is reached over gRPC). The
embedded default runs every service on one PostgreSQL server; in production each service may get a
database (or a server) of its own and only its URL changes.

Provisioning needs an administrator (the embedded server's superuser; in production a DBA runs
``clipmind db provision`` with an admin URL once). It is idempotent: roles, schemas and grants that exist
are kept. Extensions (pgvector) are created here too, in ``public``, because creating them needs more
privilege than a service role has.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from services.common.db import check_schema

T = TypeVar("T")

# Services that own a schema of their own today (the others still share ``public`` until they move).
OWNED_SCHEMAS: tuple[str, ...] = ("analytics",)


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
    finally:
        await conn.close()


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, also when an event loop is already running in this
    thread (the launcher is called from both)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
