"""Embedded PostgreSQL 16 + pgvector from the ``pgserver`` wheel.

We use the wheel's binaries (``initdb``, ``postgres``, ``psql``) directly rather than its
``PostgresServer`` handle, so the server listens on a TCP port we choose (an ordinary asyncpg DSN for
every process), logs into the state dir, and stops when the mesh stops.

PostgreSQL refuses to run as root. As root we do what pgserver does: run initdb and the server as the
unprivileged system user ``pgserver`` (created with ``useradd`` if missing) and make the data dir's
parents and the wheel's install traversable for it.

Every connection authenticates with a password (SCRAM-SHA-256; ``pg_hba.conf`` trusts nobody): the superuser's
is ``password`` (generated per instance unless given; the mesh keeps it in the state dir). A data dir made
before passwords (``--auth=trust``) gets the password set and its ``pg_hba.conf`` rewritten on its next start.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from services.launcher.process import LaunchError, ManagedProcess, OwnsProcess, as_user, log_tail

DATABASE = "clipmind"
SUPERUSER = "postgres"
SYSTEM_USER_WHEN_ROOT = "pgserver"
# Local TCP only (the server listens on one address), every role by password.
HBA = """# Written by ClipMind's launcher: every connection authenticates with a SCRAM password.
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
"""


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
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    _proc: ManagedProcess | None = field(default=None, init=False, repr=False)

    @property
    def dsn(self) -> str:
        """asyncpg-compatible DSN of the ``clipmind`` database, as the superuser (a secret: redact to print)."""
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{self.host}:{self.port}/{self.database}"

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
        # (A data dir whose superuser has another password never gets ready: its log says so.)
        waited = self._proc.wait_ready(lambda: self._psql(bin_dir, "postgres", "SELECT 1") == "1",
                                       self.ready_timeout_s)
        self._require_passwords(bin_dir)
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
        with tempfile.TemporaryDirectory(prefix="clipmind-initdb-") as tmp, open(self.log_path, "ab") as out:
            pwfile = Path(tmp) / "pw"  # initdb (running as the server's user) reads the password from a file
            pwfile.write_text(self.password + "\n")
            if user is not None:
                import pwd

                entry = pwd.getpwnam(user)
                os.chown(tmp, entry.pw_uid, entry.pw_gid)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            pwfile.chmod(0o600)
            result = subprocess.run(
                as_user([
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
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
                "-tAq",
                "-f",
                "-",
            ],
            input=sql,  # on stdin, not in argv (other local users can read a process's argv)
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5"},
        )
        if result.returncode != 0:
            raise LaunchError(f"psql on {database}: {result.stderr.strip()}")
        return result.stdout.strip()

    def _require_passwords(self, bin_dir: Path) -> None:
        """A data dir from before passwords: set the superuser's and make ``pg_hba.conf`` require them."""
        hba = self.data_dir / "pg_hba.conf"
        if hba.read_text() == HBA:
            return
        self._psql(bin_dir, "postgres", f"ALTER ROLE {SUPERUSER} PASSWORD '{self.password}'")  # urlsafe chars only
        hba.write_text(HBA)
        self._psql(bin_dir, "postgres", "SELECT pg_reload_conf()")

    def _ensure_database(self, bin_dir: Path) -> None:
        exists = self._psql(bin_dir, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists != "1":
            self._psql(bin_dir, "postgres", f'CREATE DATABASE "{self.database}"')
