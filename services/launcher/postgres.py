"""Embedded PostgreSQL 16 + pgvector from the ``pgserver`` wheel.

We use the wheel's binaries (``initdb``, ``postgres``, ``psql``) directly rather than its
``PostgresServer`` handle, so the server listens on a TCP port we choose (an ordinary asyncpg DSN for
every process), logs into the state dir, and stops when the mesh stops.

PostgreSQL refuses to run as root. As root we do what pgserver does: run initdb and the server as the
unprivileged system user ``pgserver`` (created with ``useradd`` if missing) and make the data dir's
parents and the wheel's install traversable for it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from services.launcher.process import LaunchError, ManagedProcess, OwnsProcess, as_user, log_tail

DATABASE = "clipmind"
SUPERUSER = "postgres"
SYSTEM_USER_WHEN_ROOT = "pgserver"


def pg_bin_dir() -> Path:
    """The ``bin`` directory of PostgreSQL inside the pgserver wheel."""
    # Located via the import system without importing pgserver (its import has side effects).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError("the pgserver wheel is not installed (pip install pgserver)")
    path = Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise LaunchError(f"pgserver wheel has no postgres binary at {path}; reinstall pgserver")
    return path


@dataclass
class EmbeddedPostgres(OwnsProcess):
    """PostgreSQL on ``host:port`` with its data under ``data_dir`` (kept across restarts)."""

    data_dir: Path
    log_path: Path
    port: int
    host: str = "127.0.0.1"
    database: str = DATABASE
    ready_timeout_s: float = 60.0
    _proc: ManagedProcess | None = field(default=None, init=False, repr=False)

    @property
    def dsn(self) -> str:
        """asyncpg-compatible DSN of the ``clipmind`` database."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{self.database}"

    def start(self) -> float:
        """Init the data dir if new, start the server, create the database; returns seconds to ready."""
        bin_dir = pg_bin_dir()
        user = self._prepare_permissions(bin_dir)
        self._initdb(bin_dir, user)
        self._proc = ManagedProcess(
            name="postgres",
            argv=[
                str(bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
            ],
            log_path=self.log_path,
            user=user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, checkpoint, exit
            stop_timeout_s=30.0,
        )
        self._proc.start()
        waited = self._proc.wait_ready(lambda: self._psql(bin_dir, "postgres", "SELECT 1") == "1", self.ready_timeout_s)
        self._ensure_database(bin_dir)
        return waited


    def psql(self, sql: str, database: str | None = None) -> str:
        """Run one statement through the wheel's ``psql``; returns unaligned tuples-only output."""
        return self._psql(pg_bin_dir(), database or self.database, sql)

    # -- internals -------------------------------------------------------------------------------

    def _prepare_permissions(self, bin_dir: Path) -> str | None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if os.geteuid() != 0:
            self.data_dir.chmod(0o700)
            return None
        import pwd
        import stat
        import warnings

        with warnings.catch_warnings():  # pgserver's import warns about XDG_RUNTIME_DIR; irrelevant here
            warnings.simplefilter("ignore")
            from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(SYSTEM_USER_WHEN_ROOT)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        ensure_folder_permissions(bin_dir.parent / "share", read)
        entry = pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            if path.stat().st_uid != entry.pw_uid:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        self.data_dir.chmod(0o700)
        return SYSTEM_USER_WHEN_ROOT

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            result = subprocess.run(
                as_user([
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ], user),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=120,
            )
        if result.returncode != 0:
            raise LaunchError(
                f"initdb failed ({result.returncode}); last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def _psql(self, bin_dir: Path, database: str, sql: str) -> str:
        result = subprocess.run(
            [
                str(bin_dir / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAqc",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise LaunchError(f"psql on {database}: {result.stderr.strip()}")
        return result.stdout.strip()

    def _ensure_database(self, bin_dir: Path) -> None:
        exists = self._psql(bin_dir, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists != "1":
            self._psql(bin_dir, "postgres", f'CREATE DATABASE "{self.database}"')
