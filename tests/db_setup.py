"""Test setup in the database: each service's pool on its own schema, and rows production code makes across
services in several steps."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.analytics import search_log as analytics_store
from services.common import request_context
from services.common.db import Database, create_pool
from services.common.db_provision import service_dsn
from services.common.principal import SYSTEM, Principal
from services.identity import store as identity_store
from services.ingest import store as ingest_store
from services.pipeline import job_store
from services.search import clip_store
from services.search.retrieval import CONNECTION_SETTINGS

SERVICE_SCHEMAS = {
    "ingest": (ingest_store.MIGRATIONS, ingest_store.SCHEMA),
    "pipeline": (job_store.MIGRATIONS, job_store.SCHEMA),
    "search": (clip_store.MIGRATIONS, clip_store.SCHEMA),
    "analytics": (analytics_store.MIGRATIONS, analytics_store.SCHEMA),
    "identity": (identity_store.MIGRATIONS, identity_store.SCHEMA),
}


# Passwords of the services' roles in tests (the embedded server requires a password of every role).
ROLE_PASSWORDS = {service: f"test-{service}-role-password" for service in SERVICE_SCHEMAS}


def role_dsn(admin_dsn: str, service: str) -> str:
    """The DSN of ``service``'s role (provisioned with ``ROLE_PASSWORDS``) on ``admin_dsn``'s database."""
    return service_dsn(admin_dsn, service, ROLE_PASSWORDS[service])


async def service_db(dsn: str, service: str, **options: Any) -> Database:
    """A pool on ``service``'s schema with its migrations applied (as the DSN's role: the admin in tests)."""
    migrations, schema = SERVICE_SCHEMAS[service]
    if service == "search":  # as the search process opens it: pgvector's codec, iterative HNSW scans
        options = {"vectors": True, "settings": CONNECTION_SETTINGS, **options}
    return await create_pool(dsn, migrations=migrations, schema=schema, **options)


class ServicerStub:
    """A servicer called in-process the way a guarded stub calls it over gRPC (``stub.Method(request)``), raising
    the same domain errors (``InternalChannels`` turns remote errors back into them): for tests of one service's
    side of an internal contract without starting the other service's server."""

    def __init__(self, servicer: Any, principal: Principal = SYSTEM) -> None:
        self._servicer = servicer
        self._principal = principal
        self.initial_metadata: tuple[tuple[str, str], ...] = ()  # what the last call sent ahead of its response

    def __getattr__(self, method: str) -> Any:
        call = getattr(self._servicer, method)

        async def invoke(request: Any) -> Any:
            # As the server's interceptor would: the caller (the system, for internal calls) is bound.
            with request_context.bind(principal=self._principal):
                return await call(request, _Context(self))

        return invoke


class _Context:
    """The part of a servicer context that servicers use besides raising errors: initial metadata."""

    def __init__(self, stub: ServicerStub) -> None:
        self._stub = stub

    async def send_initial_metadata(self, metadata: Any) -> None:
        self._stub.initial_metadata = tuple(metadata)


@asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new, empty database on the server of ``admin_dsn`` for the block (its DSN), dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        parts = urlsplit(admin_dsn)
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                            "AND pid <> pg_backend_pid()", name)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
