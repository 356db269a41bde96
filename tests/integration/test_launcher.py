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
from services.launcher.envoy import DEFAULT_DESCRIPTOR, EnvoyLimits, validate_config
from services.launcher.process import ManagedProcess
from services.launcher.redis import redis_ping, resp

pytestmark = pytest.mark.integration

SERVICES = [
    ("clipmind.ingest.v1", "IngestService"),
    ("clipmind.identity.v1", "IdentityService"),
    ("clipmind.pipeline.v1", "PipelineService"),
    ("clipmind.search.v1", "SearchService"),
    ("clipmind.analytics.v1", "AnalyticsService"),
]


def _redis(port: int, *command: str, password: str = "") -> bytes:
    """One raw command (after AUTH with ``password``): the server's first reply."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if password:
            sock.sendall(resp("AUTH", password))
            assert sock.recv(64) == b"+OK\r\n"
        sock.sendall(resp(*command))
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
        assert int(server.psql("SHOW server_version_num")) // 10000 == 18
        server.psql("CREATE EXTENSION IF NOT EXISTS vector")
        assert server.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'") == "0.8.5"
        server.psql("CREATE TABLE items (id int PRIMARY KEY, v vector(3))")
        server.psql("INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0,1,0]')")
        assert server.psql("SELECT id FROM items ORDER BY v <=> '[0.9,0.1,0]' LIMIT 1") == "1"
        server.stop()
        server.start()
        assert server.psql("SELECT count(*) FROM items") == "2"
    finally:
        server.stop()


async def test_postgres_refuses_connections_without_the_password(pg_dsn: str) -> None:
    from urllib.parse import urlsplit

    import asyncpg

    parts = urlsplit(pg_dsn)
    assert parts.password, "the embedded server's DSN carries its password"
    host = f"{parts.hostname}:{parts.port}{parts.path}"
    for dsn in (f"postgresql://{parts.username}@{host}", f"postgresql://{parts.username}:wrong@{host}"):
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError,
                            asyncpg.ClientCannotConnectError)):
            await asyncpg.connect(dsn, timeout=10)


def test_a_data_dir_from_before_passwords_gets_one_on_start(tmp_path: Path) -> None:
    """A data dir made with ``--auth=trust`` (the launcher before passwords): the next start sets the
    superuser's password and makes pg_hba.conf require it."""
    server = EmbeddedPostgres(tmp_path / "pg", tmp_path / "logs" / "pg.log", free_port())
    server.start()
    server.stop()
    (tmp_path / "pg" / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    upgraded = EmbeddedPostgres(tmp_path / "pg", tmp_path / "logs" / "pg.log", server.port,
                                password="a-new-password-for-the-old-dir")
    upgraded.start()
    try:
        assert upgraded.psql("SELECT 1") == "1"
        assert "trust" not in (tmp_path / "pg" / "pg_hba.conf").read_text()
        stale = EmbeddedPostgres(tmp_path / "pg", tmp_path / "logs" / "pg.log", server.port, password="wrong")
        with pytest.raises(LaunchError):
            stale.psql("SELECT 1")
    finally:
        upgraded.stop()


async def test_postgres_dsn_works_with_asyncpg(pg_dsn: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        assert await connection.fetchval("SELECT '[3,4]'::vector <-> '[0,0]'::vector") == 5.0
    finally:
        await connection.close()


def test_redis_refuses_commands_without_its_password_and_never_shows_it(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", tmp_path / "logs" / "redis.log", free_port())
    server.start()
    try:
        for command in (("PING",), ("GET", "k"), ("CONFIG", "GET", "requirepass"), ("KEYS", "*")):
            assert _redis(server.port, *command).startswith(b"-NOAUTH"), command
        assert _redis(server.port, "AUTH", "wrong").startswith(b"-WRONGPASS")
        assert _redis(server.port, "PING", password=server.password) == b"+PONG\r\n"
        assert not redis_ping("127.0.0.1", server.port)
        assert server.pid is not None  # not on the command line (every local user can read it)...
        assert server.password not in Path(f"/proc/{server.pid}/cmdline").read_text()
        assert server.password not in (tmp_path / "logs" / "redis.log").read_text()  # ...nor in the log
        assert oct((tmp_path / "redis" / "secrets.conf").stat().st_mode & 0o777) == "0o600"
    finally:
        server.stop()


def test_redis_keeps_data_across_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", tmp_path / "logs" / "redis.log", free_port())
    server.start()
    try:
        pw = server.password
        assert _redis(server.port, "SET", "clipmind:test", "kept", password=pw) == b"+OK\r\n"
        assert _redis(server.port, "CONFIG", "GET", "appendonly", password=pw).endswith(b"yes\r\n")
        server.stop()
        server.start()
        assert _redis(server.port, "GET", "clipmind:test", password=pw) == b"$4\r\nkept\r\n"
    finally:
        server.stop()


def test_rendered_envoy_config_fills_every_placeholder(descriptor: Path) -> None:
    ports = EnvoyPorts(8080, 9901, 50051, 50052, 50053, 50054, 8081, 50055)
    config = render_config(ports, descriptor)
    assert "${" not in config
    assert str(descriptor.resolve()) in config
    assert "port_value: 50053" in config
    assert "convert_grpc_status: true" in config


def test_envoy_starts_with_rendered_config_and_is_ready(tmp_path: Path, descriptor: Path) -> None:
    ports = EnvoyPorts(*(free_port() for _ in range(8)))
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
    ports = EnvoyPorts(free_port(), free_port(), 1, 2, 3, 4, 5, 6)
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
        password = (tmp_path / "state" / "redis.password").read_text().strip()  # kept in the state dir
        assert endpoints.redis_url == f"redis://:{password}@127.0.0.1:{port}/0"
        _redis(port, "SET", "k", "v", password=password)
        mesh.start_supervisor()
        again = mesh.restart()
        assert again.database_url == endpoints.database_url
        assert again.redis_url == endpoints.redis_url  # the same password after a restart
        assert redis_ping("127.0.0.1", port, password)
        assert _redis(port, "GET", "k", password=password) == b"$1\r\nv\r\n"
        assert (tmp_path / "state" / "logs" / "postgres.log").is_file()
        assert mesh.supervisor.running  # supervised before the restart, supervised after it
        assert {name: part["state"] for name, part in mesh.status().items()} == {
            "postgres": "running", "redis": "running"}
    finally:
        mesh.stop()
    import json

    document = json.loads((tmp_path / "state" / "status.json").read_text())
    assert document["mesh"]["state"] == "stopped"
    assert {part["state"] for part in document["parts"].values()} == {"stopped"}


def test_rendered_envoy_config_passes_envoys_own_validation(tmp_path: Path, descriptor: Path) -> None:
    ports = EnvoyPorts(8080, 9901, 50051, 50052, 50053, 50054, 8081, 50055)
    limits = EnvoyLimits(request_headers_timeout_s=3, default_bytes=1000, search_bytes=5000)
    config = tmp_path / "envoy.yaml"
    config.write_text(render_config(ports, descriptor, limits=limits))
    text = config.read_text()
    assert "request_headers_timeout: 3s" in text
    assert "stream_idle_timeout: 300s" in text
    assert "range_match: { start: 5001," in text and "max_request_bytes: 5000" in text
    assert "max_request_body_size: 8388608" in text  # the transcoder: the largest limit (subtitles)
    validate_config(config)  # envoy --mode validate
    config.write_text(text.replace("request_headers_timeout: 3s", "request_headers_timeout: soon"))
    with pytest.raises(LaunchError, match="envoy rejects"):
        validate_config(config)


class _RecordingUpstream:
    """A real gRPC server answering every method with an empty message and recording each call's
    path, request size and x-request-id metadata (what Envoy forwards)."""

    def __init__(self) -> None:
        import grpc

        self.calls: list[tuple[str, int, str | None]] = []
        calls = self.calls

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):  # type: ignore[no-untyped-def]
                def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
                    metadata = dict(context.invocation_metadata())
                    calls.append((details.method, len(request), metadata.get("x-request-id")))
                    return b""

                return grpc.unary_unary_rpc_method_handler(unary)

        from concurrent.futures import ThreadPoolExecutor

        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=4), handlers=[Handler()],
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)


def test_envoy_limits_bodies_and_passes_request_ids_to_the_services(tmp_path: Path) -> None:
    if not DEFAULT_DESCRIPTOR.is_file():
        pytest.skip("needs the generated descriptor set (transcoding of the real methods)")
    import httpx

    upstream = _RecordingUpstream()  # plays ingest and search
    ports = EnvoyPorts(free_port(), free_port(), upstream.port, free_port(), upstream.port, free_port(), free_port(),
                       free_port())
    limits = EnvoyLimits(default_bytes=64 * 1024, search_bytes=256 * 1024, upload_write_bytes=512 * 1024)
    envoy = EmbeddedEnvoy(tmp_path / "envoy", tmp_path / "logs" / "envoy.log", ports, limits=limits)
    envoy.start()

    def chunked(size: int):  # type: ignore[no-untyped-def]  # a body without Content-Length
        yield b'{"query":"'
        for _ in range(size // 4096):
            yield b"a" * 4096
        yield b'"}'

    try:
        with httpx.Client(base_url=envoy.url, timeout=30) as client:
            # Within limits: transcoded, forwarded with an x-request-id, which comes back to the client.
            ok = client.post("/v1/clips:search", json={"query": "x" * 200_000})
            assert ok.status_code == 200, ok.text
            method, size, request_id = upstream.calls[-1]
            assert method == "/clipmind.search.v1.SearchService/Search" and size > 200_000
            assert request_id and ok.headers["x-request-id"] == request_id
            # A client's own request id is kept end to end.
            mine = client.get("/v1/clips/c1", headers={"x-request-id": "client-chosen-id"})
            assert mine.headers["x-request-id"] == "client-chosen-id"
            assert upstream.calls[-1][2] == "client-chosen-id"

            calls = len(upstream.calls)
            too_large = [
                # Content-Length over the method's limit: 413 at once, as google.rpc.Status JSON.
                client.post("/v1/clips:search", json={"query": "x" * 300_000}),
                client.post("/v1/uploads", json={"filename": "x" * 70_000}),
                client.put("/v1/uploads/u1:write", content=b"\0" * (600 * 1024)),
                # No Content-Length (chunked): the buffer filter stops it at the same limits.
                client.post("/v1/clips:search", content=chunked(300_000),
                            headers={"content-type": "application/json"}),
                client.post("/v1/uploads", content=chunked(70_000), headers={"content-type": "application/json"}),
            ]
            for response in too_large:
                assert response.status_code == 413, response.text
                assert response.headers["content-type"] == "application/json", (response.request.url, response.text)
                assert response.headers["x-request-id"]
                body = response.json()
                assert body["code"] == 8 and body["details"][0]["reason"] == "REQUEST_TOO_LARGE"
            assert len(upstream.calls) == calls  # none of them reached a service
            # The upload write takes a whole chunk (its own, larger limit).
            write = client.put("/v1/uploads/u1:write", params={"offset": 0}, content=b"\0" * (300 * 1024),
                               headers={"content-type": "application/octet-stream"})
            assert write.status_code == 200, write.text
            assert upstream.calls[-1][0] == "/clipmind.ingest.v1.IngestService/WriteUpload"
            # A REST path that names no method is a JSON 404, not a request to a service.
            missing = client.get("/v1/clips:search")
            assert missing.status_code == 404 and missing.json()["code"] == 5
    finally:
        envoy.stop()
        upstream.stop()
