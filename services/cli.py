"""``clipmind`` command line: ``clipmind up`` runs the whole mesh until Ctrl-C; ``clipmind status`` shows it.

Every flag falls back to its ``CLIPMIND_*`` variable; a URL given for the database, Redis or Triton
means that part is external and not launched. Data lives in the state dir and survives restarts.

``up`` supervises what it started: a part that exits is restarted with backoff (see
``services/launcher/supervisor.py``); the mesh stops on Ctrl-C/SIGTERM, or when a part cannot be started
again. ``status`` prints the state of each part from ``<state-dir>/status.json``, which ``up`` keeps current.
``db-provision`` makes each service's schema and role on an external PostgreSQL (``up`` does it for the
embedded one) and moves a database from before the services' split into those schemas.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from services.launcher import Endpoints, LaunchError, Mesh, MeshConfig, MeshPorts
from services.launcher.process import redact
from services.launcher.supervisor import STATUS_FILE


def _env(name: str) -> str | None:
    return os.environ.get(f"CLIPMIND_{name}") or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipmind", description="ClipMind video semantic search mesh.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up", help="start every part, health-check it, print endpoints, keep it running until Ctrl-C"
    )
    _state_dir_argument(up)
    up.add_argument(
        "--database-url",
        default=_env("DATABASE_URL"),
        help="use this PostgreSQL instead of the embedded one (CLIPMIND_DATABASE_URL)",
    )
    up.add_argument(
        "--redis-url", default=_env("REDIS_URL"), help="use this Redis instead of the embedded one (CLIPMIND_REDIS_URL)"
    )
    up.add_argument(
        "--triton-url",
        default=_env("TRITON_URL"),
        help="use this Triton gRPC host:port instead of the embedded one (CLIPMIND_TRITON_URL)",
    )
    up.add_argument(
        "--blob-dir",
        type=Path,
        default=_env("BLOB_DIR"),
        help="blob store directory (CLIPMIND_BLOB_DIR, default <state-dir>/blobs)",
    )
    up.add_argument(
        "--http-port",
        type=int,
        default=int(_env("HTTP_PORT") or 8080),
        help="Envoy port for REST and gRPC (CLIPMIND_HTTP_PORT, default 8080)",
    )
    up.add_argument("--log-level", default=_env("LOG_LEVEL") or "INFO", help="CLIPMIND_LOG_LEVEL")
    status = commands.add_parser("status", help="show each part of a running mesh: state, pid, restarts")
    _state_dir_argument(status)
    status.add_argument("--json", action="store_true", help="print status.json as it is")
    status.set_defaults(log_level=_env("LOG_LEVEL") or "INFO")
    provision = commands.add_parser(
        "db-provision", help="create each service's schema and database role (idempotent; adopts a database "
        "from before the services' split)",
    )
    provision.add_argument(
        "--admin-url", default=_env("DATABASE_URL"),
        help="PostgreSQL URL of a role that may create roles and schemas (CLIPMIND_DATABASE_URL)",
    )
    provision.set_defaults(log_level=_env("LOG_LEVEL") or "INFO")
    models = commands.add_parser(
        "models", help="list every model with its state (ready / degraded / off / error), runtime and weights "
        "source; `models pull [name]` fetches weights where a model hub is reachable",
    )
    models.add_argument("--json", action="store_true", help="print the list as JSON")
    models.set_defaults(log_level=_env("LOG_LEVEL") or "WARNING", models_command="list")
    model_commands = models.add_subparsers(dest="models_command")
    pull = model_commands.add_parser(
        "pull", help="fetch the configured weights into the model caches (never done by the running mesh)"
    )
    pull.add_argument("names", nargs="*", default=["clip", "whisper"], help="clip, sbert, whisper (default: clip "
                      "and whisper, the models whose weights do not come with ClipMind)")
    return parser


def db_provision(args: argparse.Namespace) -> int:
    """Provision every service's role and schema; print the URL each service should be given."""
    from services.common.db_provision import OWNED_SCHEMAS, provision, run_blocking, service_dsn

    if not args.admin_url:
        print("clipmind: give --admin-url (or CLIPMIND_DATABASE_URL)", file=sys.stderr)
        return 2
    passwords = {s: p for s in OWNED_SCHEMAS if (p := os.environ.get(f"CLIPMIND_DB_PASSWORD_{s.upper()}"))}
    run_blocking(provision(args.admin_url, passwords=passwords))
    print("Provisioned. Give each service its own role's URL, with the password of its role "
          "(CLIPMIND_DB_PASSWORD_<SERVICE> at provisioning, or ALTER ROLE):")
    for service in OWNED_SCHEMAS:
        print(f"  {service:<10} CLIPMIND_DATABASE_URL={service_dsn(args.admin_url, service)}")
    print("  (the worker runs as the pipeline)")
    return 0


def _state_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(_env("STATE_DIR") or ".clipmind"),
        help="where embedded servers keep data and logs (CLIPMIND_STATE_DIR, default ./.clipmind)",
    )


def describe(endpoints: Endpoints, state_dir: Path) -> str:
    lines = [
        "ClipMind is up.",
        f"  REST + gRPC (Envoy)  {endpoints.envoy_url}",
        f"  media                {endpoints.media_base_url}/",
        *(f"  gRPC {name:<15} {address}" for name, address in endpoints.grpc.items()),
        *(f"  metrics {name:<12} {url}" for name, url in endpoints.metrics.items()),
        f"  PostgreSQL           {redact(endpoints.database_url)}",
        f"  Redis                {redact(endpoints.redis_url)}",
        f"  Triton (gRPC)        {endpoints.triton_url}",
        f"  blobs                {endpoints.blob_dir}",
        f"  embedded: {', '.join(endpoints.embedded) or '-'}",
        f"  external: {', '.join(endpoints.external) or '-'}",
        f"  logs: {state_dir / 'logs'}",
        *([f"  first admin's password is in {admin_password} (readable by you only)"]
          if (admin_password := state_dir / "admin.password").exists() else []),
        f"  status: clipmind status --state-dir {state_dir}",
        "Parts that exit are restarted. Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def model_report(triton_url: str) -> str:
    """What each model is doing, as Triton reports it: ready, degraded (random weights) or off, with the
    setting that provides its weights."""
    import asyncio

    from services.common.model_health import describe as describe_model
    from services.inference.triton import TritonInference

    async def statuses() -> list[str]:
        inference = TritonInference(triton_url, timeout_s=30)
        try:
            return [describe_model(s) for s in (await inference.status()).values()]
        finally:
            await inference.close()

    try:
        lines = asyncio.run(statuses())
    except Exception as exc:  # a report only: the mesh is up, say why the models could not be read
        lines = [f"could not read model status from Triton: {exc}"]
    return "\n".join(["Models:", *(f"  {line}" for line in lines)])


def up(args: argparse.Namespace) -> int:
    config = MeshConfig(
        state_dir=args.state_dir,
        ports=MeshPorts(envoy=args.http_port),
        database_url=args.database_url,
        redis_url=args.redis_url,
        triton_url=args.triton_url,
        blob_dir=args.blob_dir,
        log_level=args.log_level,
    )
    mesh = Mesh(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        print(f"\n{signal.Signals(signum).name}: stopping…", flush=True)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting ClipMind (state dir {mesh.state_dir})…", flush=True)
        endpoints = mesh.start(on_ready=lambda name, s: print(f"  {name:<10} healthy after {s:5.1f}s", flush=True))
        print(model_report(endpoints.triton_url), flush=True)
        print(describe(endpoints, mesh.state_dir), flush=True)
        mesh.start_supervisor()
        while not stop.wait(1.0):
            mesh.check_alive()  # raises once the supervisor gave up on a part
    except LaunchError as exc:
        print(f"clipmind: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        mesh.stop()
        print("stopped.", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "up":
        return up(args)
    if args.command == "status":
        return status(args)
    if args.command == "db-provision":
        return db_provision(args)
    if args.command == "models":
        return models_pull(args.names) if args.models_command == "pull" else models_list(args.json)
    return 2


def models_list(as_json: bool) -> int:
    """Print every model's state, runtime and weights source (from the settings in the environment); 1 when a
    model's explicitly configured weights are unusable."""
    from services.models.catalog import describe

    reports = describe()
    if as_json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        for r in reports:
            print(f"{r.name:<11} {r.state:<9} {r.runtime or '-'}")
            print(f"{'':<21} weights: {r.source or '-'} ({r.setting})")
            if r.detail:
                print(f"{'':<21} {r.detail}")
    return 1 if any(r.state == "error" for r in reports) else 0


def models_pull(names: Sequence[str]) -> int:
    """Fetch each named model's weights; 1 when any could not be fetched (each failure says why)."""
    from services.models.catalog import PullError, pull

    failed = 0
    for name in names:
        try:
            print(f"{name}: {pull(name)}", flush=True)
        except PullError as exc:
            print(f"not pulled: {exc}", file=sys.stderr, flush=True)
            failed += 1
    return 1 if failed else 0


def status(args: argparse.Namespace) -> int:
    """Print ``<state-dir>/status.json`` as a table; 1 when there is none, 3 when the mesh is not running."""
    path = args.state_dir / STATUS_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"clipmind: no mesh status at {path} (is `clipmind up` running with this --state-dir?)",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"clipmind: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(format_status(document))
    mesh = document.get("mesh", {})
    return 0 if mesh.get("state") == "running" and _pid_alive(mesh.get("pid")) else 3


def format_status(document: dict[str, Any], now: float | None = None) -> str:
    """The table ``clipmind status`` prints for a status.json document."""
    now = time.time() if now is None else now
    mesh = document.get("mesh", {})
    state = mesh.get("state", "unknown")
    if state == "running" and not _pid_alive(mesh.get("pid")):
        state = "not running (its process is gone; status is stale)"
    header = f"ClipMind mesh: {state} (pid {mesh.get('pid', '-')}, updated {_ago(mesh.get('updated'), now)})"
    lines = [header]
    if mesh.get("message"):
        lines.append(f"  {mesh['message']}")
    columns = ("PART", "STATE", "PID", "RESTARTS", "LAST EXIT", "SINCE")
    rows = [columns]
    for name, part in document.get("parts", {}).items():
        part_state = part.get("state", "?")
        if part_state == "backoff" and part.get("backoff_s") is not None:
            part_state = f"backoff {part['backoff_s']:g}s"
        rows.append((
            name,
            part_state,
            str(part.get("pid") or "-"),
            str(part.get("restarts", 0)),
            part.get("last_exit") or "-",
            _ago(part.get("since"), now),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _ago(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    try:
        seconds = max(0.0, now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return iso
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    sys.exit(main())
