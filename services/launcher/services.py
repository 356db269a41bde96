"""The mesh's own processes: ``python -m services.<name>``, configured only through ``CLIPMIND_*``.

Servers are ready when grpc.health.v1 reports the overall service ``""`` as SERVING; the arq worker has
no port and is ready when it is still running after a short grace period. ``start()`` can be called again
after the process exited (the supervisor does): same module, port and environment.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.launcher.process import ManagedProcess, OwnsProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_GRACE_S = 2.0
# A service drains for CLIPMIND_SHUTDOWN_GRACE_S (ServerSettings.shutdown_grace_s, 30 s by default) after
# SIGTERM; the launcher waits that long plus this margin before it sends SIGKILL.
DEFAULT_SHUTDOWN_GRACE_S = 30.0
STOP_MARGIN_S = 15.0


def grpc_serving(address: str, service: str = "", timeout_s: float = 2.0) -> bool:
    """True when the grpc.health.v1 server at ``address`` reports ``service`` SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def python_path() -> str:
    """PYTHONPATH for children: the repo root and the generated protos, ahead of what was set."""
    entries = [str(REPO_ROOT), str(REPO_ROOT / "gen" / "python"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(e for e in entries if e)


@dataclass
class ServiceProcess(OwnsProcess):
    """One ``python -m <module>`` of the mesh.

    ``grpc_address`` is ``host:port`` for servers (readiness by health check) and ``None`` for the
    worker. ``env`` holds the ``CLIPMIND_*`` settings for this process.
    """

    name: str
    module: str
    env: Mapping[str, str]
    log_path: Path
    grpc_address: str | None = None
    ready_timeout_s: float = 120.0
    _proc: ManagedProcess | None = field(default=None, init=False, repr=False)

    @property
    def stop_timeout_s(self) -> float:
        """How long ``stop()`` waits after SIGTERM before SIGKILL: the process's shutdown grace + a margin."""
        try:
            grace_s = float(self.env.get("CLIPMIND_SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S))
        except ValueError:
            grace_s = DEFAULT_SHUTDOWN_GRACE_S
        return max(grace_s, DEFAULT_SHUTDOWN_GRACE_S) + STOP_MARGIN_S

    def start(self) -> float:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = python_path()
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = ManagedProcess(
            name=self.name,
            argv=[sys.executable, "-m", self.module],
            log_path=self.log_path,
            env=env,
            cwd=REPO_ROOT,
            stop_timeout_s=self.stop_timeout_s,
        )
        self._proc.start()
        if self.grpc_address is not None:
            address = self.grpc_address
            return self._proc.wait_ready(lambda: grpc_serving(address), self.ready_timeout_s, interval_s=0.3)
        started = time.monotonic()
        return self._proc.wait_ready(lambda: time.monotonic() - started >= WORKER_GRACE_S, self.ready_timeout_s)

