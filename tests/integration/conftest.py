"""Session-scoped real servers for integration tests: PostgreSQL+pgvector, Redis, Triton (sbert).

Each starts once per test session from the wheels (services.launcher) on free ports, in a tmp state dir,
and stops at the end. To run against servers you already have, set ``CLIPMIND_TEST_DATABASE_URL``,
``CLIPMIND_TEST_REDIS_URL`` or ``CLIPMIND_TEST_TRITON_URL``; that part is then not launched.

    async def test_something(pg_dsn, redis_url, triton_url): ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.launcher import EmbeddedPostgres, EmbeddedRedis, EmbeddedTriton, free_port

#: Model settings of the session's tritonserver (and of in-process models compared with it).
TRITON_TEST_MODEL_ENV = {
    "CLIPMIND_CLIP_WEIGHTS": "random",
    "CLIPMIND_WHISPER_WEIGHTS": "random",
    "CLIPMIND_MODEL_SEED": "0",
}


@pytest.fixture(scope="session")
def integration_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state dir per session: data and logs (``logs/<part>.log``) of the servers below."""
    return tmp_path_factory.mktemp("clipmind-state")


@pytest.fixture(scope="session")
def pg_dsn(integration_state_dir: Path) -> Iterator[str]:
    """asyncpg DSN of database ``clipmind`` on the embedded PostgreSQL 18 with pgvector 0.8 available."""
    external = os.environ.get("CLIPMIND_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(
        integration_state_dir / "postgres", integration_state_dir / "logs" / "postgres.log", free_port()
    )
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(integration_state_dir: Path) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a redis-server with AOF persistence."""
    external = os.environ.get("CLIPMIND_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedRedis(integration_state_dir / "redis", integration_state_dir / "logs" / "redis.log", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_url(integration_state_dir: Path) -> Iterator[str]:
    """gRPC ``host:port`` of tritonserver serving model_repository/ (every model loaded and ready).

    CLIP and Whisper run with seeded ``random`` weights (``TRITON_TEST_MODEL_ENV``): no hub is reachable
    here, and the tests compare Triton's answers with the in-process model classes built the same way.
    """
    external = os.environ.get("CLIPMIND_TEST_TRITON_URL")
    if external:
        yield external
        return
    server = EmbeddedTriton(
        integration_state_dir / "triton",
        integration_state_dir / "logs" / "triton.log",
        grpc_port=free_port(),
        http_port=free_port(),
        model_env=TRITON_TEST_MODEL_ENV,
    )
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
