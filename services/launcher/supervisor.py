"""Keeps the mesh's processes running: a part that exits is restarted, Kubernetes style.

The ``Supervisor`` watches every launched part (PostgreSQL, Redis, Triton, the services, the worker,
Envoy). A part that exits or is killed is started again, on the same ports and with the same environment,
after a backoff that doubles with each consecutive failure (1 s, 2 s, 4 s … capped at 30 s) and resets
once the part has stayed up for 60 s. A part that cannot even come up ``max_failed_starts`` times in a
row is given up on: it is marked ``failed`` and ``failure`` says why, so its owner (``clipmind up``)
stops the mesh with that message.

Every exit and restart is logged (name, exit status or signal, restart count, backoff), marked in the
part's own log file, counted, and written with the state of every part to ``status.json`` (what
``clipmind status`` prints).

    supervisor = Supervisor(parts, status_path=state_dir / "status.json")
    supervisor.start()          # a background thread calling tick() every interval_s
    ...
    supervisor.shutdown()       # before the parts are stopped, so nothing restarts them
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from services.launcher.process import describe_exit

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
HEARTBEAT_S = 2.0  # status.json is rewritten at least this often while supervising


class Supervised(Protocol):
    """A launched part: ``start`` blocks until it is ready (or raises), ``stop`` also cleans up after a
    crash; ``exit_code`` is None while it runs."""

    def start(self) -> float: ...
    def stop(self) -> None: ...
    @property
    def pid(self) -> int | None: ...
    def exit_code(self) -> int | None: ...


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a part that exited, and when to give up on one that cannot start."""

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    reset_after_s: float = 60.0  # up this long: the next failure waits initial_backoff_s again
    max_failed_starts: int = 5  # consecutive starts that fail (exit or time out before ready): give up

    def backoff(self, failures: int) -> float:
        """Wait before the restart that follows the ``failures``-th consecutive failure (1, 2, …)."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(0, failures - 1))


class PartState(StrEnum):
    RUNNING = "running"
    EXITED = "exited"  # seen dead, not handled yet (no supervisor running)
    BACKOFF = "backoff"  # waiting to be restarted
    STARTING = "starting"  # being restarted, not ready yet
    FAILED = "failed"  # given up on
    STOPPED = "stopped"


@dataclass
class _Tracked:
    name: str
    part: Supervised
    state: PartState = PartState.RUNNING
    pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None
    since: float = 0.0  # wall clock, when the part entered its state
    up_since: float = 0.0  # monotonic, when it last became ready
    failures: int = 0  # consecutive failures (exits and failed starts) since it was last up reset_after_s
    failed_starts: int = 0  # consecutive starts that failed
    due: float = 0.0  # monotonic, when a part in BACKOFF is started again
    backoff_s: float | None = None
    message: str | None = None
    thread: threading.Thread | None = None

    def enter(self, state: PartState) -> None:
        self.state = state
        self.since = time.time()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Supervisor:
    """Restarts the parts it is given when they exit; see the module docstring."""

    def __init__(
        self,
        parts: Sequence[tuple[str, Supervised]],
        policy: RestartPolicy | None = None,
        *,
        status_path: Path | None = None,
        on_give_up: Callable[[str, str], None] | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.status_path = status_path
        self._on_give_up = on_give_up
        self._lock = threading.RLock()
        self._tracked = {name: _Tracked(name, part) for name, part in parts}
        now = time.time()
        for tracked in self._tracked.values():
            tracked.pid = tracked.part.pid
            tracked.since = now
            tracked.up_since = time.monotonic()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._written = 0.0
        self.failure: str | None = None  # set when a part was given up on
        self.write_status()

    # -- control ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, interval_s: float = 0.5) -> None:
        """Supervise in a background thread, one ``tick`` every ``interval_s``."""
        if self.running:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.tick()
                except Exception:  # keep supervising; a bug here must not leave the mesh unwatched
                    log.exception("supervisor tick failed")

        self._thread = threading.Thread(target=loop, name="mesh-supervisor", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop supervising: no more restarts; a restart under way is cut short (its process stopped)."""
        with self._lock:
            self._stopping = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        for tracked in self._tracked.values():
            thread = tracked.thread
            while thread is not None and thread.is_alive():
                # The restart thread waits for readiness; stopping the process ends that wait, and a
                # start that got further is stopped again on the next pass.
                try:
                    tracked.part.stop()
                except Exception:
                    log.exception("stopping %s during shutdown failed", tracked.name)
                thread.join(0.5)

    def mark_stopped(self) -> None:
        """Record that the owner stopped every part (written to status.json)."""
        with self._lock:
            for tracked in self._tracked.values():
                if tracked.state is not PartState.FAILED:
                    tracked.enter(PartState.STOPPED)
                tracked.pid = None
                tracked.backoff_s = None
        self.write_status(mesh_state="stopped")

    # -- supervision -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Look at every part once: note exits, schedule and launch restarts, reset backoffs."""
        changed = False
        with self._lock:
            if self._stopping:
                return
            now = time.monotonic()
            for tracked in self._tracked.values():
                if tracked.state is PartState.RUNNING:
                    code = tracked.part.exit_code()
                    if code is not None:
                        self._exited(tracked, code, now)
                        changed = True
                    elif tracked.failures and now - tracked.up_since >= self.policy.reset_after_s:
                        tracked.failures = 0  # stayed up: the next crash starts the backoff over
                elif tracked.state is PartState.BACKOFF and now >= tracked.due:
                    tracked.restarts += 1
                    tracked.backoff_s = None
                    tracked.enter(PartState.STARTING)
                    tracked.thread = threading.Thread(
                        target=self._restart, args=(tracked,), name=f"restart-{tracked.name}", daemon=True
                    )
                    tracked.thread.start()
                    changed = True
        if changed or time.monotonic() - self._written >= HEARTBEAT_S:
            self.write_status()

    def _exited(self, tracked: _Tracked, code: int, now: float) -> None:
        up_s = now - tracked.up_since
        tracked.last_exit = describe_exit(code)
        tracked.pid = None
        tracked.failures += 1
        self._schedule(tracked, now)
        log.warning(
            "%s exited (%s) after %.1fs up; restart %d in %.1fs",
            tracked.name, tracked.last_exit, up_s, tracked.restarts + 1, tracked.backoff_s,
        )
        self._mark_log(
            tracked,
            f"{tracked.name} exited ({tracked.last_exit}); restart {tracked.restarts + 1} in {tracked.backoff_s:.1f}s",
        )

    def _schedule(self, tracked: _Tracked, now: float) -> None:
        tracked.backoff_s = self.policy.backoff(tracked.failures)
        tracked.due = now + tracked.backoff_s
        tracked.enter(PartState.BACKOFF)

    def _restart(self, tracked: _Tracked) -> None:
        """Runs in its own thread: clean up after the dead process, start the part, wait until ready."""
        try:
            tracked.part.stop()  # reaps it and kills what it left in its process group
        except Exception:
            log.exception("cleaning up after %s failed", tracked.name)
        error: BaseException | None = None
        started = time.monotonic()
        if not self._stopping:
            try:
                tracked.part.start()
            except Exception as exc:
                error = exc
        with self._lock:
            if self._stopping:
                return
            now = time.monotonic()
            if error is None:
                tracked.pid = tracked.part.pid
                tracked.up_since = now
                tracked.failed_starts = 0
                tracked.message = None
                tracked.enter(PartState.RUNNING)
                log.warning(
                    "%s restarted (restart %d, pid %s), ready after %.1fs",
                    tracked.name, tracked.restarts, tracked.pid, now - started,
                )
                self._mark_log(tracked, f"{tracked.name} restarted (restart {tracked.restarts}), ready")
            else:
                self._start_failed(tracked, error, now)
        self.write_status()

    def _start_failed(self, tracked: _Tracked, error: BaseException, now: float) -> None:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        tracked.failures += 1
        tracked.failed_starts += 1
        tracked.pid = None
        tracked.last_exit = f"start failed: {reason}"
        if tracked.failed_starts >= self.policy.max_failed_starts:
            tracked.message = (
                f"{tracked.name} failed to start {tracked.failed_starts} times in a row; giving up. "
                f"Last error: {error}"
            )
            tracked.backoff_s = None
            tracked.enter(PartState.FAILED)
            log.error("%s", tracked.message)
            self._mark_log(tracked, f"{tracked.name}: gave up after {tracked.failed_starts} failed starts")
            try:
                tracked.part.stop()
            except Exception:
                log.exception("stopping %s failed", tracked.name)
            if self.failure is None:
                self.failure = tracked.message
            if self._on_give_up is not None:
                self._on_give_up(tracked.name, tracked.message)
            return
        self._schedule(tracked, now)
        log.warning(
            "%s failed to start (%s); failed start %d of %d, next try in %.1fs",
            tracked.name, reason, tracked.failed_starts, self.policy.max_failed_starts, tracked.backoff_s,
        )
        self._mark_log(tracked, f"{tracked.name} failed to start; next try in {tracked.backoff_s:.1f}s")

    @staticmethod
    def _mark_log(tracked: _Tracked, text: str) -> None:
        """A line in the part's own log file, next to its output (the file may not exist: ignored)."""
        path = getattr(tracked.part, "log_path", None)
        if not isinstance(path, Path):
            return
        try:
            with open(path, "a", encoding="utf-8") as out:
                out.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: {text}\n")
        except OSError:
            pass

    # -- status ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per part: state, pid, restarts, last_exit, since (ISO 8601 UTC), backoff_s, failed_starts."""
        with self._lock:
            result: dict[str, dict[str, Any]] = {}
            for name, tracked in self._tracked.items():
                state, last_exit, pid = tracked.state, tracked.last_exit, tracked.pid
                if state is PartState.RUNNING:
                    code = tracked.part.exit_code()
                    if code is not None:  # dead, and no tick has seen it yet
                        state, last_exit, pid = PartState.EXITED, describe_exit(code), None
                elif state is PartState.STARTING:
                    pid = tracked.part.pid  # launched, not ready yet
                result[name] = {
                    "state": str(state),
                    "pid": pid,
                    "restarts": tracked.restarts,
                    "last_exit": last_exit,
                    "since": _iso(tracked.since),
                    "backoff_s": tracked.backoff_s,
                    "failed_starts": tracked.failed_starts,
                    "message": tracked.message,
                }
            return result

    def write_status(self, mesh_state: str | None = None) -> None:
        """Write ``status.json`` (atomically: a reader never sees half a file)."""
        with self._lock:  # one writer at a time (the tick and restart threads all write)
            self._written = time.monotonic()
            if self.status_path is None:
                return
            if mesh_state is None:
                mesh_state = "failed" if self.failure else "running"
            document = {
                "mesh": {
                    "state": mesh_state,
                    "pid": os.getpid(),
                    "updated": _iso(time.time()),
                    "supervised": self.running,
                    "message": self.failure,
                },
                "parts": self.snapshot(),
            }
            temporary = self.status_path.with_name(f".{self.status_path.name}.{os.getpid()}.tmp")
            try:
                self.status_path.parent.mkdir(parents=True, exist_ok=True)
                temporary.write_text(json.dumps(document, indent=2) + "\n")
                os.replace(temporary, self.status_path)
            except OSError:
                log.exception("cannot write %s", self.status_path)
