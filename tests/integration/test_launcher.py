"""The launcher's real servers: PostgreSQL (pgvector, persistence), Redis (persistence), Envoy, Mesh."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import pytest

from services.launcher import (
    EmbeddedEnvoy,
    EmbeddedPostgres,
    EmbeddedRedis,
    EnvoyPorts,
    LaunchError,
    Mesh,
    MeshConfig,
    MeshPorts,
    free_port,
    render_config,
)
from services.launcher.envoy import DEFAULT_DESCRIPTOR
from services.launcher.process import ManagedProcess
from services.launcher.redis import redis_ping

pytestmark = pytest.mark.integration

SERVICES = [
    ("clipmind.ingest.v1", "IngestService"),
    ("clipmind.identity.v1", "IdentityService"),
    ("clipmind.pipeline.v1", "PipelineService"),
    ("clipmind.search.v1", "SearchService"),
    ("clipmind.analytics.v1", "AnalyticsService"),
]


def _redis(port: int, *command: str) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        parts = [f"*{len(command)}\r\n".encode()]
        for arg in command:
            parts.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
        sock.sendall(b"".join(parts))
        return sock.recv(4096)


@pytest.fixture
def descriptor(tmp_path: Path) -> Path:
    """The real descriptor set when generated, else a minimal one declaring the five services."""
    if DEFAULT_DESCRIPTOR.is_file():
        return DEFAULT_DESCRIPTOR
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    for package, service in SERVICES:
        proto = files.file.add(name=f"{package.replace('.', '/')}/svc.proto", package=package, syntax="proto3")
        proto.message_type.add(name="Ping")
        proto.service.add(name=service).method.add(
            name="Ping", input_type=f".{package}.Ping", output_type=f".{package}.Ping"
        )
    path = tmp_path / "clipmind.binpb"
    path.write_bytes(files.SerializeToString())
    return path


def test_postgres_has_pgvector_and_keeps_data_across_restart(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", tmp_path / "logs" / "pg.log", free_port())
    server.start()
    try:
        assert server.dsn.endswith("/clipmind")
        server.psql("CREATE EXTENSION IF NOT EXISTS vector")
        server.psql("CREATE TABLE items (id int PRIMARY KEY, v vector(3))")
        server.psql("INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0,1,0]')")
        assert server.psql("SELECT id FROM items ORDER BY v <=> '[0.9,0.1,0]' LIMIT 1") == "1"
        server.stop()
        server.start()
        assert server.psql("SELECT count(*) FROM items") == "2"
    finally:
        server.stop()


async def test_postgres_dsn_works_with_asyncpg(pg_dsn: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        assert await connection.fetchval("SELECT '[3,4]'::vector <-> '[0,0]'::vector") == 5.0
    finally:
        await connection.close()


def test_redis_keeps_data_across_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", tmp_path / "logs" / "redis.log", free_port())
    server.start()
    try:
        assert _redis(server.port, "SET", "clipmind:test", "kept") == b"+OK\r\n"
        assert _redis(server.port, "CONFIG", "GET", "appendonly").endswith(b"yes\r\n")
        server.stop()
        server.start()
        assert _redis(server.port, "GET", "clipmind:test") == b"$4\r\nkept\r\n"
    finally:
        server.stop()


def test_rendered_envoy_config_fills_every_placeholder(descriptor: Path) -> None:
    ports = EnvoyPorts(8080, 9901, 50051, 50052, 50053, 50054, 8081)
    config = render_config(ports, descriptor)
    assert "${" not in config
    assert str(descriptor.resolve()) in config
    assert "port_value: 50053" in config
    assert "convert_grpc_status: true" in config


def test_envoy_starts_with_rendered_config_and_is_ready(tmp_path: Path, descriptor: Path) -> None:
    ports = EnvoyPorts(free_port(), free_port(), free_port(), free_port(), free_port(), free_port(), free_port())
    envoy = EmbeddedEnvoy(tmp_path / "envoy", tmp_path / "logs" / "envoy.log", ports, descriptor=descriptor)
    envoy.start()
    try:
        with urllib.request.urlopen(f"{envoy.admin_url}/ready", timeout=5) as response:
            assert response.read().strip() == b"LIVE"
        # No upstream is running: a gRPC-path request is routed to its cluster and answered UNAVAILABLE (14).
        request = urllib.request.Request(
            f"{envoy.url}/clipmind.search.v1.SearchService/Nothing",
            data=b"",
            headers={"content-type": "application/grpc"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["grpc-status"] == "14"
    finally:
        envoy.stop()


def test_envoy_without_descriptor_is_a_clear_error(tmp_path: Path) -> None:
    ports = EnvoyPorts(free_port(), free_port(), 1, 2, 3, 4, 5)
    envoy = EmbeddedEnvoy(tmp_path, tmp_path / "envoy.log", ports, descriptor=tmp_path / "missing.binpb")
    with pytest.raises(LaunchError, match="descriptor"):
        envoy.start()


def test_a_process_that_dies_reports_its_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "doomed", [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"], tmp_path / "doomed.log"
    )
    proc.start()
    with pytest.raises(LaunchError, match=r"(?s)status 3.*boom: bad config"):
        proc.wait_ready(lambda: False, timeout_s=30)


def test_mesh_launches_infra_uses_external_parts_and_restarts(tmp_path: Path, triton_url: str) -> None:
    config = MeshConfig(
        state_dir=tmp_path / "state",
        ports=MeshPorts.free(),
        triton_url=triton_url,
        with_services=False,
        with_envoy=False,
    )
    mesh = Mesh(config)
    endpoints = mesh.start()
    try:
        assert endpoints.embedded == ("postgres", "redis")
        assert endpoints.external == ("triton",)
        assert endpoints.triton_url == triton_url
        assert endpoints.blob_dir.is_dir()
        port = config.ports.redis
        assert endpoints.redis_url == f"redis://127.0.0.1:{port}/0"
        _redis(port, "SET", "k", "v")
        again = mesh.restart()
        assert again.database_url == endpoints.database_url
        assert redis_ping("127.0.0.1", port)
        assert _redis(port, "GET", "k") == b"$1\r\nv\r\n"
        assert (tmp_path / "state" / "logs" / "postgres.log").is_file()
    finally:
        mesh.stop()
