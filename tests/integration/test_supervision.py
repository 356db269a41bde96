"""Supervision: parts of the mesh that die are restarted with backoff; one that cannot start is given up on;
``clipmind status`` shows it all; a service drains in-flight RPCs on SIGTERM.

The mesh here is a small real one: embedded PostgreSQL and Redis, the five services, the arq worker and
Envoy, without Triton (the services point at a port where nothing listens and report the models as
unavailable), so it starts in seconds rather than minutes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services import cli
from services.common.auth import SystemCredentials
from services.common.tokens import TokenSigner
from services.launcher import EmbeddedPostgres, LaunchError, Mesh, MeshConfig, MeshPorts, free_port
from services.launcher.process import ManagedProcess, OwnsProcess
from services.launcher.redis import redis_ping
from services.launcher.services import grpc_serving, python_path
from services.launcher.supervisor import RestartPolicy, Supervisor

pytestmark = pytest.mark.integration

POLICY = RestartPolicy(initial_backoff_s=0.5, max_backoff_s=4.0, reset_after_s=60.0, max_failed_starts=3)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    config = MeshConfig(
        state_dir=tmp_path_factory.mktemp("supervised"),
        ports=MeshPorts.free(),
        triton_url=f"127.0.0.1:{free_port()}",  # nothing there: models unavailable, no Triton to wait for
        extra_env={"CLIPMIND_INFERENCE_BACKEND": "triton"},
        restart_policy=POLICY,
    )
    launched = Mesh(config)
    launched.start()
    launched.start_supervisor(interval_s=0.2)
    try:
        yield launched
    finally:
        launched.stop()


def _restarted(mesh: Mesh, name: str, old_pid: int) -> dict[str, Any] | None:
    part = mesh.status()[name]
    if part["state"] == "running" and part["pid"] not in (None, old_pid):
        return part
    return None


def _envoy_serves(mesh: Mesh) -> bool:
    url = f"{mesh.endpoints.envoy_url}/v1/jobs/nothing"
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as exc:  # routed and answered by the pipeline service (404/403/400)
        return exc.code < 500
    except OSError:
        return False
    return True


@pytest.mark.chaos
def test_killed_worker_and_service_are_restarted_while_the_rest_keeps_serving(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.launcher.supervisor")
    before = mesh.status()
    assert {name: part["state"] for name, part in before.items()} == dict.fromkeys(
        ["postgres", "redis", "ingest", "pipeline", "search", "analytics", "identity", "worker", "envoy"], "running"
    )
    victims = {name: before[name]["pid"] for name in ("worker", "analytics")}
    for pid in victims.values():
        os.kill(pid, signal.SIGKILL)

    started = time.monotonic()
    while not all(_restarted(mesh, name, pid) for name, pid in victims.items()):
        # Meanwhile the rest of the mesh answers: Envoy routes, the other services are SERVING.
        assert _envoy_serves(mesh)
        for name in ("ingest", "pipeline", "search"):
            assert grpc_serving(mesh.endpoints.grpc[name]), name
        assert time.monotonic() - started < 120, mesh.status()
        time.sleep(0.5)

    mesh.check_alive()  # supervised and nothing given up on: no error
    status = mesh.status()
    for name in victims:
        assert status[name]["restarts"] == 1
        assert status[name]["last_exit"] == "killed by SIGKILL"
    assert grpc_serving(mesh.endpoints.analytics)
    assert all(part["restarts"] == 0 for name, part in status.items() if name not in victims)

    # status.json says the same (the supervisor rewrites it on every change).
    document = wait_for(
        lambda: (d := json.loads(mesh.status_path.read_text()))["parts"]["worker"]["state"] == "running" and d,
        10, "status.json to show the restarted worker",
    )
    assert document["mesh"]["state"] == "running" and document["mesh"]["pid"] == os.getpid()
    for name in victims:
        assert document["parts"][name]["restarts"] == 1
        assert document["parts"][name]["pid"] == status[name]["pid"]

    # Each exit and restart is logged, in the launcher's log and in the part's own log file.
    messages = [r.getMessage() for r in caplog.records]
    for name in victims:
        assert any(m.startswith(f"{name} exited (killed by SIGKILL)") and "restart 1 in 0.5s" in m for m in messages)
        assert any(m.startswith(f"{name} restarted (restart 1") for m in messages)
        assert f"supervisor: {name} exited (killed by SIGKILL)" in mesh.log_path(name).read_text()


@pytest.mark.chaos
def test_killed_infrastructure_comes_back_on_the_same_ports(mesh: Mesh) -> None:
    before = mesh.status()
    infra = ("envoy", "redis", "postgres")
    for name in infra:
        os.kill(before[name]["pid"], signal.SIGKILL)
    for name in infra:
        wait_for(lambda name=name: _restarted(mesh, name, before[name]["pid"]), 90, f"{name} restarted")
        assert mesh.status()[name]["restarts"] == 1
    assert redis_ping("127.0.0.1", mesh.config.ports.redis, (mesh.state_dir / "redis.password").read_text().strip())
    postgres = mesh.part("postgres")
    assert isinstance(postgres, EmbeddedPostgres)
    assert postgres.psql("SELECT count(*) > 0 FROM pg_tables") == "t"  # crash recovery done, data there
    wait_for(lambda: _envoy_serves(mesh), 60, "Envoy routing to the pipeline again")


def test_clipmind_status_prints_the_table(mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wait_for(lambda: all(p["state"] == "running" for p in mesh.status().values()), 60, "every part running")
    mesh.supervisor.write_status()
    # A copy, so the supervisor's next write cannot change the file between reading it here and in the CLI.
    (tmp_path / "status.json").write_bytes(mesh.status_path.read_bytes())
    document = json.loads((tmp_path / "status.json").read_text())
    code = cli.main(["status", "--state-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"ClipMind mesh: running (pid {os.getpid()}")
    assert lines[1].split() == ["PART", "STATE", "PID", "RESTARTS", "LAST", "EXIT", "SINCE"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"postgres", "redis", "ingest", "pipeline", "search", "analytics", "identity", "worker",
                         "envoy"}
    for name, row in rows.items():
        part = document["parts"][name]
        cells = row.split()
        assert cells[1] == "running" and cells[2] == str(part["pid"]) and cells[3] == str(part["restarts"])
        assert f"  {part['last_exit'] or '-'}  " in row
        assert row.endswith("s ago") or row.endswith("m ago")

    assert cli.main(["status", "--state-dir", str(mesh.state_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parts"].keys() == rows.keys()


def test_clipmind_status_without_a_mesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 1
    assert "no mesh status" in capsys.readouterr().err
    # A status file left by a mesh whose process is gone is reported as stale.
    (tmp_path / "status.json").write_text(json.dumps({
        "mesh": {"state": "running", "pid": 2**22 + 12345, "updated": "2026-01-01T00:00:00Z"},
        "parts": {"redis": {"state": "running", "pid": 7, "restarts": 2, "last_exit": "exit status 1",
                            "since": "2026-01-01T00:00:00Z"}},
    }))
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert "not running" in out and "exit status 1" in out


# -- the supervisor with small real processes: backoff and giving up -------------------------------------


class Command(OwnsProcess):
    """A part running ``python -c <code>``, ready once it has been alive for ``ready_after_s``."""

    def __init__(self, name: str, code: str, log_path: Path, ready_after_s: float = 0.3) -> None:
        self.name, self.code, self.log_path, self.ready_after_s = name, code, log_path, ready_after_s
        self._proc: ManagedProcess | None = None

    def start(self) -> float:
        self._proc = ManagedProcess(self.name, [sys.executable, "-c", self.code], self.log_path, stop_timeout_s=5)
        self._proc.start()
        began = time.monotonic()
        return self._proc.wait_ready(lambda: time.monotonic() - began >= self.ready_after_s, timeout_s=10)


def _supervise(parts: list[tuple[str, Command]], policy: RestartPolicy, status: Path) -> Supervisor:
    for _, part in parts:
        part.start()
    supervisor = Supervisor(parts, policy, status_path=status)
    supervisor.start(interval_s=0.05)
    return supervisor


def test_backoff_doubles_between_consecutive_crashes_up_to_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.launcher.supervisor")
    crasher = Command("crasher", "import time; time.sleep(0.5); raise SystemExit(7)", tmp_path / "crasher.log")
    steady = Command("steady", "import time; time.sleep(600)", tmp_path / "steady.log")
    policy = RestartPolicy(initial_backoff_s=0.1, max_backoff_s=0.8, reset_after_s=60, max_failed_starts=3)
    supervisor = _supervise([("crasher", crasher), ("steady", steady)], policy, tmp_path / "status.json")
    try:
        wait_for(lambda: supervisor.snapshot()["crasher"]["restarts"] >= 5, 30, "five restarts")
    finally:
        supervisor.shutdown()
        crasher.stop()
        steady.stop()
    backoffs = [
        float(r.getMessage().rsplit(" in ", 1)[1].rstrip("s"))
        for r in caplog.records
        if r.getMessage().startswith("crasher exited (exit status 7)")
    ]
    assert backoffs[:5] == [0.1, 0.2, 0.4, 0.8, 0.8]
    snapshot = supervisor.snapshot()
    assert snapshot["crasher"]["last_exit"] == "exit status 7"
    assert snapshot["steady"]["restarts"] == 0  # the others are left alone
    assert "supervisor: crasher exited (exit status 7); restart 2 in 0.2s" in (tmp_path / "crasher.log").read_text()


def test_a_part_that_cannot_start_again_is_given_up_on(tmp_path: Path) -> None:
    # Runs once; every later start exits at once with status 3 (as a broken config would).
    flag = tmp_path / "ran-once"
    code = textwrap.dedent(f"""
        import pathlib, sys, time
        flag = pathlib.Path({str(flag)!r})
        if flag.exists():
            print("cannot start: bad config", flush=True)
            sys.exit(3)
        flag.touch()
        time.sleep(600)
    """)
    doomed = Command("doomed", code, tmp_path / "doomed.log")
    given_up: list[str] = []
    doomed.start()
    supervisor = Supervisor(
        [("doomed", doomed)],
        RestartPolicy(initial_backoff_s=0.1, max_backoff_s=0.4, max_failed_starts=3),
        status_path=tmp_path / "status.json",
        on_give_up=lambda name, message: given_up.append(name),
    )
    supervisor.start(interval_s=0.05)
    try:
        assert doomed.pid is not None
        os.kill(doomed.pid, signal.SIGKILL)
        wait_for(lambda: supervisor.failure, 30, "the supervisor to give up")
        snapshot = supervisor.snapshot()["doomed"]
        assert snapshot["state"] == "failed"
        assert snapshot["restarts"] == 3 and snapshot["failed_starts"] == 3
        assert snapshot["last_exit"].startswith("start failed: doomed exited with status 3 before it was ready")
        assert supervisor.failure is not None
        assert "doomed failed to start 3 times in a row; giving up" in supervisor.failure
        assert "cannot start: bad config" in supervisor.failure  # the log tail explains why
        assert given_up == ["doomed"]
        time.sleep(0.5)
        assert supervisor.snapshot()["doomed"]["restarts"] == 3  # no more tries
        document = json.loads((tmp_path / "status.json").read_text())
        assert document["mesh"]["state"] == "failed"
        assert document["parts"]["doomed"]["state"] == "failed"
    finally:
        supervisor.shutdown()
        doomed.stop()


# -- graceful shutdown of a gRPC server ------------------------------------------------------------------

SLOW_SERVER = """
import asyncio, sys
import grpc
from services.common.auth import Authenticator
from services.common.grpc_server import configure_logging, run_server
from services.common.revocations import Revocations
from services.common.tokens import TokenSigner

configure_logging("INFO")
SIGNER = TokenSigner({"k1": b"k" * 32}, active_kid="k1")

def register(server):
    async def slow(request, context):
        await asyncio.sleep(float(request.decode() or 0))
        return b"done"

    handler = grpc.method_handlers_generic_handler(
        "test.Slow", {"Sleep": grpc.unary_unary_rpc_method_handler(slow)})
    server.add_generic_rpc_handlers([handler])
    return ["test.Slow"]

def draining():
    print("on_draining called", flush=True)

async def also_draining():
    print("async on_draining called", flush=True)

asyncio.run(run_server(name="slow", host="127.0.0.1", port=int(sys.argv[1]), register=register,
                       grace_s=float(sys.argv[2]), on_draining=[draining, also_draining],
                       authenticator=Authenticator(SIGNER, Revocations.from_url("redis://127.0.0.1:9/0"), None)))
"""
def _system() -> list[tuple[str, str]]:
    """What the slow server's callers send: a system token signed with its key (made when called: a token
    made at import would have expired by the time a long run reaches these tests)."""
    return [("authorization", SystemCredentials(TokenSigner({"k1": b"k" * 32}, active_kid="k1")).authorization())]


def test_sigterm_drains_in_flight_rpcs_and_refuses_new_ones(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "slow.log"
    env = {**os.environ, "PYTHONPATH": python_path()}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port), "10"], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: grpc_serving(address), 60, "the server to serve")
        with grpc.insecure_channel(address) as channel:
            sleep = channel.unary_unary("/test.Slow/Sleep")
            in_flight = sleep.future(b"2", timeout=30, metadata=_system())
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            # Health says NOT_SERVING at once, while the in-flight call goes on to finish.
            wait_for(lambda: not grpc_serving(address, timeout_s=1), 5, "NOT_SERVING")
            assert in_flight.result() == b"done"
        # Once drained the process exits by itself, well before its 10 s grace.
        assert proc.wait(timeout=8) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert "on_draining called" in log and "async on_draining called" in log
    assert log.index("draining: NOT_SERVING") < log.index("on_draining called") < log.index("stopped serving")


def test_grace_runs_out_for_rpcs_that_take_too_long(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": python_path()}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port), "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: grpc_serving(address), 60, "the server to serve")
        with grpc.insecure_channel(address) as channel:
            in_flight = channel.unary_unary("/test.Slow/Sleep").future(b"60", timeout=60, metadata=_system())
            time.sleep(0.5)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as err:
                in_flight.result()
            assert err.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - began < 8
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.chaos
def test_a_service_that_cannot_start_again_stops_the_mesh_with_a_clear_message(mesh: Mesh) -> None:
    # Runs last in this module: it leaves analytics given up on. Something else takes analytics' port
    # the moment it dies, so every restart fails to bind.
    port = mesh.config.ports.analytics
    os.kill(mesh.status()["analytics"]["pid"], signal.SIGKILL)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        wait_for(lambda: _try_bind(squatter, port), 5, "analytics' port to be free", interval_s=0.01)
        squatter.listen()
        wait_for(lambda: mesh.supervisor.failure, 120, "the supervisor to give up on analytics")
        with pytest.raises(LaunchError, match="analytics failed to start 3 times in a row; giving up"):
            mesh.check_alive()
        status = mesh.status()
        assert status["analytics"]["state"] == "failed"
        assert status["analytics"]["last_exit"].startswith("start failed: analytics exited with status")
        assert json.loads(mesh.status_path.read_text())["mesh"]["state"] == "failed"
        assert "Failed to bind to address" in (mesh.supervisor.failure or "")  # the log tail says why
        # The other parts were left running.
        assert all(part["state"] == "running" for name, part in status.items() if name != "analytics")
    finally:
        squatter.close()


def _try_bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True
