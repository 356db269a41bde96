"""``clipmind`` command line: ``clipmind up`` runs the whole mesh until Ctrl-C.

Every flag falls back to its ``CLIPMIND_*`` variable; a URL given for the database, Redis or Triton
means that part is external and not launched. Data lives in the state dir and survives restarts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from services.launcher import Endpoints, LaunchError, Mesh, MeshConfig, MeshPorts


def _env(name: str) -> str | None:
    return os.environ.get(f"CLIPMIND_{name}") or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipmind", description="ClipMind video semantic search mesh.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start every part, health-check it, print endpoints, run until Ctrl-C")
    up.add_argument(
        "--state-dir",
        type=Path,
        default=Path(_env("STATE_DIR") or ".clipmind"),
        help="where embedded servers keep data and logs (CLIPMIND_STATE_DIR, default ./.clipmind)",
    )
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
    return parser


def describe(endpoints: Endpoints, state_dir: Path) -> str:
    lines = [
        "ClipMind is up.",
        f"  REST + gRPC (Envoy)  {endpoints.envoy_url}",
        f"  media                {endpoints.media_base_url}/",
        *(f"  gRPC {name:<15} {address}" for name, address in endpoints.grpc.items()),
        f"  PostgreSQL           {endpoints.database_url}",
        f"  Redis                {endpoints.redis_url}",
        f"  Triton (gRPC)        {endpoints.triton_url}",
        f"  blobs                {endpoints.blob_dir}",
        f"  embedded: {', '.join(endpoints.embedded) or '-'}",
        f"  external: {', '.join(endpoints.external) or '-'}",
        f"  logs: {state_dir / 'logs'}",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def model_report(triton_url: str) -> str:
    """What each model is doing, as Triton reports it: ready, degraded (random weights) or off, with the
    setting that provides its weights."""
    import asyncio

    from services.common.inference import TritonInference
    from services.common.model_health import describe as describe_model

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
        while not stop.wait(2.0):
            mesh.check_alive()
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
    return 2


if __name__ == "__main__":
    sys.exit(main())
