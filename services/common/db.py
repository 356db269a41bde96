"""PostgreSQL access: one asyncpg pool per process and versioned SQL migrations applied on start.

Each service owns one PostgreSQL schema (``CLIPMIND_DB_SCHEMA``, by default its own name) and keeps its
migrations beside its code (``services/<svc>/migrations/NNNN_name.sql``); the connection's search_path is
that schema (then ``public``, where extensions such as pgvector live), so SQL never names a schema and the
same code runs against one shared server or a database of its own. Migrations are applied in order, each
in its own transaction, recorded in the schema's ``schema_migrations``. Every process migrates on start;
an advisory lock per schema makes concurrent starts safe, and applied versions are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from services.common.config import CommonSettings
from services.common.errors import Unavailable
from services.common.metrics import POOL_ACQUIRE_TIMEOUTS, track_pool

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x636C6970  # "clip"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# The record of applied migrations, one table per schema (unqualified: the schema on the search_path).
SCHEMA_MIGRATIONS_DDL = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())"""


def check_schema(schema: str) -> str:
    """A schema name safe to put in SQL unquoted (services name theirs; nothing comes from users)."""
    if not _SCHEMA.match(schema):
        raise ValueError(f"bad schema name {schema!r}: lower-case letters, digits and _ only")
    return schema


def search_path(schema: str) -> dict[str, str]:
    """asyncpg ``server_settings`` that make ``schema`` the connection's own (extensions stay in public)."""
    return {"search_path": f"{check_schema(schema)}, public"}


def migration_files(directory: Path) -> list[tuple[int, str, Path]]:
    """The migrations in order: (version, name, path)."""
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {directory}")
    return found


async def migrate(
    dsn: str, directory: Path, *, schema: str, connect_timeout_s: float = 60.0
) -> list[int]:
    """Apply the pending migrations of ``directory`` in ``schema``; returns the versions applied now.

    The schema is created when missing and the role may (one superuser or database owner for every
    service); where each service has its own role, provisioning (``db_provision``) made it already."""
    conn = await asyncpg.connect(dsn, timeout=connect_timeout_s, server_settings=search_path(schema))
    applied_now: list[int] = []
    lock = _MIGRATION_LOCK ^ zlib.crc32(schema.encode())
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", lock)
        try:
            exists = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema)
            if not exists:
                if await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL"):
                    raise RuntimeError(
                        f"schema {schema!r} does not exist, and this database holds the schema all services "
                        "shared before the split: provision it first (`clipmind db-provision`), which moves the "
                        "tables into each service's schema")
                try:
                    await conn.execute(f"CREATE SCHEMA {schema}")
                except asyncpg.InsufficientPrivilegeError as exc:
                    raise RuntimeError(
                        f"schema {schema!r} does not exist and this role may not create it: provision the "
                        "database first (`clipmind db provision`, or services.common.db_provision)"
                    ) from exc
            await conn.execute(SCHEMA_MIGRATIONS_DDL)
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, path in migration_files(directory):
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                    )
                applied_now.append(version)
                log.info("applied migration %04d_%s", version, name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock)
    finally:
        await conn.close()
    return applied_now



# Errors that mean "the database is not reachable right now" (down, restarting, connection dropped), not
# "this request is wrong": callers get UNAVAILABLE with a retry hint, and the pool reconnects on its own.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # connection lost, refused, rejected
    asyncpg.exceptions.AdminShutdownError,  # server restarting: sessions terminated
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # server starting up or shutting down
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,  # "connection is closed" after the server went away
    ConnectionError,
    OSError,
)

RETRY_AFTER_S = 1.0
# How long a starting process waits for its database before giving up (and being restarted).
STARTUP_WAIT_S = 30.0


class Database:
    """The process's asyncpg pool, bounded: every acquisition waits at most ``acquire_timeout_s``.

    asyncpg's own ``Pool.fetch``/``execute`` wait for a free connection forever, so a burst of requests
    (or code that holds a connection while asking for another) hangs instead of failing. Here a request
    that cannot get a connection in time, or loses it to a database restart, fails UNAVAILABLE with a
    RetryInfo (``retry_delay_s``) naming when to try again; the pool replaces dropped connections itself.
    It offers the subset of ``asyncpg.Pool`` that the repositories use."""

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout_s: float = 5.0, name: str = "") -> None:
        """``name`` labels the pool's metrics (``clipmind_db_pool_*{pool}``: the service's schema), read from
        asyncpg's own counts at each scrape."""
        self._pool = pool
        self.acquire_timeout_s = acquire_timeout_s
        self.name = name or "default"
        track_pool(self, self.name, lambda db: db.raw)

    @property
    def raw(self) -> asyncpg.Pool:
        return self._pool

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            conn = await self._pool.acquire(timeout=self.acquire_timeout_s)
        except TimeoutError as exc:
            POOL_ACQUIRE_TIMEOUTS.labels(self.name).inc()
            raise Unavailable(
                f"the database is busy: no connection free within {self.acquire_timeout_s:g} s; retry shortly",
                reason="DATABASE_BUSY", retry_delay_s=RETRY_AFTER_S,
            ) from exc
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc
        try:
            yield conn
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc
        finally:
            with contextlib.suppress(Exception):  # a broken connection: the pool drops and replaces it
                await self._pool.release(conn)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return str(await conn.execute(query, *args))

    async def executemany(self, query: str, args: Any) -> None:
        async with self.acquire() as conn:
            await conn.executemany(query, args)

    async def close(self) -> None:
        await self._pool.close()


def _unavailable(exc: BaseException) -> Unavailable:
    log.warning("database unreachable: %s: %s", type(exc).__name__, exc)
    return Unavailable("the database is unreachable right now; retry shortly", reason="DATABASE_UNAVAILABLE",
                       retry_delay_s=RETRY_AFTER_S)


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, acquire_timeout_s: float = 5.0,
    connect_timeout_s: float = 5.0, migrations: Path, schema: str, vectors: bool = False,
    settings: dict[str, str] | None = None,
) -> Database:
    """Migrate, then open the process's pool (with ``vectors``, the pgvector codec on every connection; with
    ``settings``, those server settings on every connection: session defaults that survive the pool's reset).

    A database that is still starting (or restarting) is waited for, up to ``STARTUP_WAIT_S``, so a
    process started beside it does not crash and get restarted in a loop."""
    min_size = min(min_size, max_size)
    deadline = time.monotonic() + STARTUP_WAIT_S
    delay = 0.25
    while True:
        try:
            await migrate(dsn, migrations, schema=schema, connect_timeout_s=connect_timeout_s)
            break
        except CONNECTION_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database not reachable yet (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=register_vector if vectors else None, command_timeout=60,
        timeout=connect_timeout_s, server_settings={**search_path(schema), **(settings or {})},
    )
    assert pool is not None
    return Database(pool, acquire_timeout_s=acquire_timeout_s, name=schema)


async def open_database(
    settings: CommonSettings, *, migrations: Path, schema: str, max_size: int | None = None, vectors: bool = False,
    server_settings: dict[str, str] | None = None,
) -> Database:
    """The process's database from its settings (pool sizes and acquire timeout are settings), in the
    service's schema (``settings.db_schema``, else ``schema``) with the service's ``migrations`` applied."""
    return await create_pool(
        settings.database_url, min_size=settings.db_pool_min_size,
        max_size=max_size if max_size is not None else settings.db_pool_max_size,
        acquire_timeout_s=settings.db_acquire_timeout_s, migrations=migrations, vectors=vectors,
        schema=settings.db_schema or schema, settings=server_settings,
    )
