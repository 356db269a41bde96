"""One child process of the mesh: start with a log file, wait until ready, stop cleanly.

Every embedded part (PostgreSQL, Redis, Triton, Envoy, the service processes) is a ``ManagedProcess``:
its stdout and stderr go to ``<state>/logs/<name>.log``, readiness is a caller-supplied probe polled
until it answers, and a process that dies or does not get ready in time raises ``LaunchError`` carrying
the tail of its log, so the failure explains itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """``argv`` run as ``user`` (we are root), switched by ``setpriv`` after exec.

    Not ``subprocess.Popen(user=...)``: asking Python to switch users in the child makes it fork() instead of
    vfork(), and fork() runs the at-fork handlers of gRPC's event engine, which restart its poller in the
    child and abort it (initdb and postgres died of SIGABRT in a test process that had used gRPC). A plain
    Popen uses vfork, which runs no handlers."""
    if user is None:
        return list(argv)
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--", *argv]

LOG_TAIL_LINES = 40


class LaunchError(RuntimeError):
    """An embedded part failed to start, died, or did not get ready in time."""


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, for a server started later.

    Taken below the kernel's ephemeral range: a port the OS hands out for ``bind(0)`` comes from that range,
    which every outgoing connection draws from too, so between this call and the server's bind a client socket
    of any process could take it (seen: a mesh part failing with "Address already in use"). Ports below the
    range are only ever taken by explicit binds. Never the same port twice in one process."""
    low, _ = _ephemeral_range()
    candidates = list(range(20000, low)) if low > 21000 else []
    random.shuffle(candidates)
    for port in candidates[:200]:
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room below the range: the OS picks
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redact(url: str) -> str:
    """``url`` without its password (``scheme://user:***@host…``), fit to print or log."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc[-1]}", parts.path, parts.query, parts.fragment))


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A child process with a log file, a readiness wait and a SIGTERM-then-SIGKILL stop."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 20.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Launch the process in its own session (so signals to the CLI do not reach it twice)."""
        if self.running():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s: %s (log %s)", self.name, " ".join(self.argv), self.log_path)
        with open(self.log_path, "ab") as out:
            out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} start {self.name}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                as_user(self.argv, self.user),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        """The exit status once the process has ended (negative: killed by that signal); None while it runs
        or before it was started."""
        return self._proc.poll() if self._proc is not None else None

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> float:
        """Poll ``probe`` until it returns True; returns the seconds waited.

        Raises ``LaunchError`` (with the log tail) when the process exits first or ``timeout_s`` passes.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            if self._proc is None:
                raise LaunchError(f"{self.name} was never started")
            code = self._proc.poll()
            if code is not None:
                raise LaunchError(
                    f"{self.name} exited with status {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                if probe():
                    waited = time.monotonic() - started
                    log.info("%s ready after %.1fs", self.name, waited)
                    return waited
            except Exception as exc:
                log.debug("%s not ready yet: %s", self.name, exc)
            if time.monotonic() >= deadline:
                self.stop()
                raise LaunchError(
                    f"{self.name} was not ready within {timeout_s:.0f}s; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(interval_s)

    def check_alive(self) -> None:
        """Raise ``LaunchError`` (with the log tail) when the process has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise LaunchError(
                f"{self.name} exited with status {self._proc.returncode}; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self) -> int | None:
        """Send ``stop_signal`` (SIGTERM by default), then SIGKILL after ``stop_timeout_s``.

        When the process already ended on its own (a crash, ``kill -9``), whatever it left running in its
        process group (PostgreSQL backends, Triton's backend stubs) is killed, so a restart starts clean.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            log.info("stopping %s (pid %s)", self.name, proc.pid)
            self._signal(proc, self.stop_signal, group=False)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, self.stop_timeout_s)
                self._signal(proc, signal.SIGKILL, group=True)
                proc.wait(10)
        self._proc = None
        return proc.returncode

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int, *, group: bool) -> None:
        # The polite signal goes to the leader only: it shuts its own helpers down (postgres backends,
        # Triton's python backend stubs). SIGKILL goes to the whole group, so no helper is orphaned.
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


class OwnsProcess:
    """Mixin for a launched part that holds one ``ManagedProcess`` in ``_proc``: stop it, check it."""

    _proc: ManagedProcess | None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()  # SIGTERM, then SIGKILL after the grace period
            self._proc = None

    def check_alive(self) -> None:
        if self._proc is not None:
            self._proc.check_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def exit_code(self) -> int | None:
        """None while running (or never started); else the exit status (negative: killed by that signal)."""
        return self._proc.exit_code() if self._proc is not None else None


def describe_exit(code: int | None) -> str:
    """``exit status 3`` / ``killed by SIGKILL`` / ``running``."""
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
