"""The whole ClipMind mesh on one machine: what ``clipmind up`` and the test fixtures start.

Order: PostgreSQL, Redis and Triton (in parallel, each waited for), then the four gRPC servers and the
arq worker (in parallel, each health-checked), then Envoy. ``stop()`` goes in reverse. Any external part
(database, Redis, Triton, blob dir) given in ``MeshConfig`` is not launched; its URL is handed to the
services unchanged, so embedded and external deployments run the same code.

Once started, a ``Supervisor`` (``services/launcher/supervisor.py``) can keep the parts running: one that
exits is restarted with backoff on the same port and environment; ``status()`` and
``<state_dir>/status.json`` show each part's state, pid and restart count.

    mesh = Mesh(MeshConfig(state_dir=tmp, ports=MeshPorts.free()))
    endpoints = mesh.start()          # blocks until every part is healthy; raises LaunchError otherwise
    mesh.start_supervisor()           # optional: restart parts that exit (a background thread)
    ...
    mesh.stop()
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from services.common.db_provision import OWNED_SCHEMAS, provision, run_blocking, service_dsn
from services.common.tokens import format_key, generate_key
from services.launcher.envoy import DEFAULT_DESCRIPTOR, EdgePolicy, EmbeddedEnvoy, EnvoyLimits, EnvoyPorts
from services.launcher.postgres import EmbeddedPostgres
from services.launcher.process import LaunchError, free_port
from services.launcher.redis import EmbeddedRedis
from services.launcher.services import ServiceProcess
from services.launcher.supervisor import STATUS_FILE, RestartPolicy, Supervisor
from services.launcher.triton import DEFAULT_MODEL_REPOSITORY, EmbeddedTriton

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


@dataclass(frozen=True)
class MeshPorts:
    """Every port of the mesh; the defaults are those of ``clipmind up``."""

    envoy: int = 8080
    envoy_admin: int = 9901
    ingest: int = 50051
    pipeline: int = 50052
    search: int = 50053
    analytics: int = 50054
    identity: int = 50055
    media: int = 8081
    postgres: int = 5433
    redis: int = 6390
    triton_grpc: int = 8001
    triton_http: int = 8000
    # Prometheus metrics (GET /metrics) of each mesh process: CLIPMIND_METRICS_PORT
    ingest_metrics: int = 9111
    pipeline_metrics: int = 9112
    search_metrics: int = 9113
    analytics_metrics: int = 9114
    identity_metrics: int = 9115
    worker_metrics: int = 9116

    def metrics(self, process: str) -> int:
        """The metrics port of ``process`` (a server's name, or "worker")."""
        return int(getattr(self, f"{process}_metrics"))

    @classmethod
    def free(cls) -> MeshPorts:
        """Ports nothing listens on now (for tests running beside a dev mesh)."""
        return cls(**{f.name: free_port() for f in fields(cls)})


@dataclass(frozen=True)
class MeshConfig:
    """What to start and where. ``None`` for a URL means "launch an embedded server"."""

    state_dir: Path = Path(".clipmind")
    ports: MeshPorts = field(default_factory=MeshPorts)
    database_url: str | None = None
    redis_url: str | None = None
    triton_url: str | None = None
    blob_dir: Path | None = None
    media_base_url: str | None = None
    log_level: str = "INFO"
    with_services: bool = True
    with_envoy: bool = True
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    envoy_limits: EnvoyLimits = field(default_factory=EnvoyLimits)
    edge: EdgePolicy = field(default_factory=EdgePolicy.from_env)
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    descriptor: Path = DEFAULT_DESCRIPTOR
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoints:
    """Where everything is once the mesh is up."""

    envoy_url: str | None
    envoy_admin_url: str | None
    grpc: Mapping[str, str]  # "ingest" | "pipeline" | "search" | "analytics" | "identity" -> host:port
    media_base_url: str
    database_url: str
    redis_url: str
    triton_url: str
    blob_dir: Path
    embedded: tuple[str, ...]  # parts this mesh launched
    external: tuple[str, ...]  # parts given by URL
    # process ("ingest" … "identity", "worker") -> its Prometheus metrics URL, http://host:port/metrics
    metrics: Mapping[str, str] = field(default_factory=dict)

    @property
    def ingest(self) -> str:
        return self.grpc["ingest"]

    @property
    def pipeline(self) -> str:
        return self.grpc["pipeline"]

    @property
    def search(self) -> str:
        return self.grpc["search"]

    @property
    def analytics(self) -> str:
        return self.grpc["analytics"]


class _Part(Protocol):
    def start(self) -> float: ...
    def stop(self) -> None: ...
    def check_alive(self) -> None: ...
    @property
    def pid(self) -> int | None: ...
    def exit_code(self) -> int | None: ...


# gRPC servers of the mesh: name -> module; the worker has no port.
SERVERS = {
    "ingest": "services.ingest",
    "pipeline": "services.pipeline",
    "search": "services.search",
    "analytics": "services.analytics",
    "identity": "services.identity",
}
WORKER_MODULE = "services.pipeline.worker"


class Mesh:
    """Starts, health-checks, stops and restarts the mesh described by a ``MeshConfig``."""

    def __init__(self, config: MeshConfig | None = None) -> None:
        self.config = config or MeshConfig()
        self.state_dir = self.config.state_dir.resolve()
        self.timings: dict[str, float] = {}
        self._started: list[tuple[str, _Part]] = []
        self._groups: list[list[str]] = []  # names started together, in start order (stopped together)
        self._endpoints: Endpoints | None = None
        self._supervisor: Supervisor | None = None
        self._supervise_interval_s: float | None = None  # set while a supervisor thread should run

    # -- public API ----------------------------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise LaunchError("the mesh is not started")
        return self._endpoints

    def start(self, on_ready: Callable[[str, float], None] | None = None) -> Endpoints:
        """Start every part and wait until healthy; on any failure stop what started and raise."""
        if self._endpoints is not None:
            return self._endpoints
        cfg, ports = self.config, self.config.ports
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        blob_dir = (cfg.blob_dir or self.state_dir / "blobs").resolve()
        blob_dir.mkdir(parents=True, exist_ok=True)
        report = on_ready or (lambda name, seconds: None)
        try:
            infra: dict[str, _Part] = {}
            if cfg.database_url is None:
                pg = EmbeddedPostgres(self.state_dir / "postgres", self._log("postgres"), ports.postgres, HOST,
                                      password=self._secret_file("postgres.password",
                                                                 lambda: secrets.token_urlsafe(24)))
                infra["postgres"] = pg
            if cfg.redis_url is None:
                infra["redis"] = EmbeddedRedis(self.state_dir / "redis", self._log("redis"), ports.redis, HOST,
                                               password=self._secret_file("redis.password",
                                                                          lambda: secrets.token_urlsafe(24)))
            if cfg.triton_url is None:
                infra["triton"] = EmbeddedTriton(
                    self.state_dir / "triton",
                    self._log("triton"),
                    ports.triton_grpc,
                    ports.triton_http,
                    HOST,
                    model_repository=cfg.model_repository,
                )
            self._start_group(infra, report)

            database_url = cfg.database_url or infra["postgres"].dsn  # type: ignore[attr-defined]
            redis_url = cfg.redis_url or infra["redis"].url  # type: ignore[attr-defined]
            triton_url = cfg.triton_url or infra["triton"].url  # type: ignore[attr-defined]
            envoy_url = f"http://{HOST}:{ports.envoy}" if cfg.with_envoy else None
            media_base_url = cfg.media_base_url or (
                f"{envoy_url}/media" if envoy_url else f"http://{HOST}:{ports.media}/media"
            )
            grpc = {name: f"{HOST}:{getattr(ports, name)}" for name in SERVERS}
            metrics = {name: f"http://{HOST}:{ports.metrics(name)}/metrics" for name in (*SERVERS, "worker")}

            if cfg.with_services:
                # Each service that owns a schema gets its own role on it (grants keep the others out).
                passwords = {name: self._role_password(name) for name in OWNED_SCHEMAS}
                run_blocking(provision(database_url, OWNED_SCHEMAS, passwords=passwords))
                common = {
                    "CLIPMIND_DATABASE_URL": database_url,
                    "CLIPMIND_REDIS_URL": redis_url,
                    "CLIPMIND_TRITON_URL": triton_url,
                    "CLIPMIND_BLOB_DIR": str(blob_dir),
                    "CLIPMIND_MEDIA_BASE_URL": media_base_url,
                    "CLIPMIND_LOG_LEVEL": cfg.log_level,
                    "CLIPMIND_GRPC_HOST": HOST,
                    # Every service verifies access tokens and signs its own system identity with these.
                    "CLIPMIND_JWT_KEYS": self._jwt_keys(),
                    "CLIPMIND_GRPC_REFLECTION": "true",
                    **{f"CLIPMIND_{name.upper()}_URL": f"dns:///{address}" for name, address in grpc.items()},
                    **cfg.extra_env,
                }
                services: dict[str, _Part] = {}
                for name, module in SERVERS.items():
                    env = {**common, "CLIPMIND_GRPC_PORT": str(getattr(ports, name)),
                           "CLIPMIND_METRICS_PORT": str(ports.metrics(name))}
                    if name in OWNED_SCHEMAS and "CLIPMIND_DATABASE_URL" not in cfg.extra_env:
                        env["CLIPMIND_DATABASE_URL"] = service_dsn(database_url, name, passwords[name])
                    if name == "ingest":
                        env["CLIPMIND_MEDIA_PORT"] = str(ports.media)
                    if name == "identity":
                        env.setdefault("CLIPMIND_ADMIN_PASSWORD_FILE", str(self.admin_password_path))
                    services[name] = ServiceProcess(name, module, env, self._log(name), grpc_address=grpc[name])
                worker_env = {**common, "CLIPMIND_METRICS_PORT": str(ports.metrics("worker"))}
                if "CLIPMIND_DATABASE_URL" not in cfg.extra_env:  # the worker is the pipeline's: its role
                    worker_env["CLIPMIND_DATABASE_URL"] = service_dsn(database_url, "pipeline", passwords["pipeline"])
                services["worker"] = ServiceProcess("worker", WORKER_MODULE, worker_env, self._log("worker"))
                self._start_group(services, report)

            if cfg.with_envoy:
                envoy = EmbeddedEnvoy(
                    self.state_dir / "envoy",
                    self._log("envoy"),
                    EnvoyPorts(
                        ports.envoy,
                        ports.envoy_admin,
                        ports.ingest,
                        ports.pipeline,
                        ports.search,
                        ports.analytics,
                        ports.media,
                        ports.identity,
                        bind_address=HOST,
                        upstream_host=HOST,
                    ),
                    descriptor=cfg.descriptor,
                    limits=cfg.envoy_limits,
                    edge=cfg.edge,
                )
                self._start_group({"envoy": envoy}, report)
        except BaseException:
            self.stop()
            raise

        embedded = tuple(name for name, _ in self._started)
        external = tuple(
            name
            for name, url in (
                ("postgres", cfg.database_url),
                ("redis", cfg.redis_url),
                ("triton", cfg.triton_url),
                ("blob_dir", cfg.blob_dir),
            )
            if url is not None
        )
        self._endpoints = Endpoints(
            envoy_url=envoy_url,
            envoy_admin_url=f"http://127.0.0.1:{ports.envoy_admin}" if cfg.with_envoy else None,
            grpc=grpc,
            media_base_url=media_base_url,
            database_url=database_url,
            redis_url=redis_url,
            triton_url=triton_url,
            blob_dir=blob_dir,
            embedded=embedded,
            external=external,
            metrics=metrics if cfg.with_services else {},
        )
        self._supervisor = Supervisor(
            list(self._started), self.config.restart_policy, status_path=self.status_path
        )
        if self._supervise_interval_s is not None:  # restart(): supervised before, supervised again
            self._supervisor.start(self._supervise_interval_s)
        return self._endpoints

    def stop(self) -> None:
        """Stop every launched part, last started first. Safe to call twice.

        The supervisor is stopped first, so nothing is restarted while the mesh goes down."""
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.shutdown()
        parts = dict(self._started)
        # Group by group, last first; within a group in parallel, so the services drain at the same time.
        for group in reversed(self._groups):
            members = [(name, parts.pop(name)) for name in group if name in parts]
            if members:
                with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="mesh-stop") as pool:
                    for _ in pool.map(lambda member: self._stop_part(*member), members):
                        pass
        for name, part in reversed(list(parts.items())):
            self._stop_part(name, part)
        self._started.clear()
        self._groups.clear()
        if supervisor is not None:
            supervisor.mark_stopped()
        self._endpoints = None
        self._supervise_interval_s = None

    def restart(self) -> Endpoints:
        """Stop and start again with the same ports and state dir (data is kept); supervised again if it
        was."""
        interval_s = self._supervise_interval_s
        self.stop()
        self._supervise_interval_s = interval_s
        return self.start()

    # -- supervision -----------------------------------------------------------------------------

    @property
    def supervisor(self) -> Supervisor:
        if self._supervisor is None:
            raise LaunchError("the mesh is not started")
        return self._supervisor

    @property
    def status_path(self) -> Path:
        """``<state_dir>/status.json``: what ``clipmind status`` prints."""
        return self.state_dir / STATUS_FILE

    def start_supervisor(self, interval_s: float = 0.5) -> None:
        """Restart parts that exit, from a background thread (until ``stop()``); see ``Supervisor``."""
        self._supervise_interval_s = interval_s
        self.supervisor.start(interval_s)

    def supervise(self) -> None:
        """One supervision pass (for callers driving it themselves); raises ``LaunchError`` once a part
        has been given up on."""
        self.supervisor.tick()
        self._raise_if_given_up()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per part: ``state``, ``pid``, ``restarts``, ``last_exit``, ``since`` (and backoff details)."""
        return self.supervisor.snapshot()

    def part(self, name: str) -> _Part:
        """A launched part by name ("postgres", "worker", "envoy", …)."""
        for started, part in self._started:
            if started == name:
                return part
        raise KeyError(name)

    def check_alive(self) -> None:
        """Raise ``LaunchError``: supervised, when a part was given up on; else (with the log tail) when
        any launched process has died."""
        if self._supervisor is not None and self._supervisor.running:
            self._raise_if_given_up()
            return
        for _, part in self._started:
            part.check_alive()

    def log_path(self, name: str) -> Path:
        return self._log(name)

    def __enter__(self) -> Endpoints:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _stop_part(name: str, part: _Part) -> None:
        try:
            part.stop()
        except Exception:
            log.exception("stopping %s failed", name)

    def _raise_if_given_up(self) -> None:
        if self._supervisor is not None and self._supervisor.failure:
            raise LaunchError(self._supervisor.failure)

    @property
    def admin_password_path(self) -> Path:
        """Where the first administrator's generated password is written (mode 600), on a new database."""
        return self.state_dir / "admin.password"

    def _jwt_keys(self) -> str:
        """The access-token signing key of this state directory (made once, kept private), unless configured."""
        configured = os.environ.get("CLIPMIND_JWT_KEYS") or self.config.extra_env.get("CLIPMIND_JWT_KEYS")
        if configured:
            return configured
        return self._secret_file("jwt.keys", lambda: format_key("k1", generate_key()))

    def _role_password(self, service: str) -> str:
        """The password of ``service``'s database role: derived from one secret of the state dir, so every
        role has its own and nothing more is stored."""
        secret = self._secret_file("db-roles.secret", lambda: secrets.token_urlsafe(32))
        return hmac.new(secret.encode(), f"role:{service}".encode(), hashlib.sha256).hexdigest()

    def _secret_file(self, name: str, make: Callable[[], str]) -> str:
        """The secret in ``<state>/<name>``, made by ``make`` the first time (mode 600)."""
        path = self.state_dir / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(make())
        return path.read_text().strip()

    def _log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _start_group(self, parts: Mapping[str, _Part], report: Callable[[str, float], None]) -> None:
        """Start ``parts`` concurrently; record each as started before waiting so stop() can reach it."""
        if not parts:
            return
        started_at = time.monotonic()
        for name, part in parts.items():
            self._started.append((name, part))
        self._groups.append(list(parts))
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="mesh-start") as pool:
            futures = {name: pool.submit(part.start) for name, part in parts.items()}
            errors = []
            for name, future in futures.items():
                try:
                    future.result()
                    self.timings[name] = time.monotonic() - started_at
                    report(name, self.timings[name])
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
        if errors:
            raise LaunchError("\n".join(errors))
