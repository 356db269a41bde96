"""Embedded Triton Inference Server: the ``tritonserver`` binary inside the ``nvidia-pytriton`` wheel.

The wheel ships the server, the python backend and one python backend stub per CPython version, with
its shared libraries in ``nvidia_pytriton.libs``. We assemble a backend directory in the state dir
(``backends/python/`` = ``libtriton_python.so`` + ``triton_python_backend_utils.py`` + the 3.11 stub)
and run the server on CPU with the repository's ``model_repository/``.

Two facts about the stub shape the environment we give it:

* It embeds the system ``libpython3.11`` and runs it isolated (``-I``), so ``PYTHONPATH`` does not
  reach ``sys.path`` on its own; each model.py adds the ``PYTHONPATH`` entries as site dirs. The
  repository root is one of them, so model.py imports the model classes from ``services.models``.
* It is built with a pybind11 that predates NumPy 2: under NumPy 2 every array it creates (e.g. a
  BYTES input) has a zero stride and repeats its first byte. The stub therefore gets NumPy 1.x from a
  small side directory (``stub_site``), ahead of the virtualenv's site-packages; torch,
  sentence-transformers and the rest still come from the virtualenv.

The models read their weights from the ``CLIPMIND_*`` model settings (``MODEL_SETTINGS_ENV``) in
tritonserver's environment: the launcher's own environment, overridden by ``EmbeddedTriton.model_env``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import site
import subprocess
import sys
import sysconfig
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.launcher.process import LaunchError, ManagedProcess, OwnsProcess

STUB_PYTHON = "3.11"
STUB_NUMPY = "numpy>=1.26,<2"
STUB_SITE_ENV = "CLIPMIND_TRITON_STUB_SITE"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"
RESTRICTED_APIS = "model-repository,shared-memory,statistics,trace,logging"
ADMIN_HEADER = "clipmind-triton-admin"
# Settings the python-backend models read (services/models/triton_backend.py); passed to tritonserver.
MODEL_SETTINGS_ENV = (
    "CLIPMIND_CLIP_ARCH",
    "CLIPMIND_CLIP_WEIGHTS",
    "CLIPMIND_WHISPER_WEIGHTS",
    "CLIPMIND_SBERT_WEIGHTS",
    "CLIPMIND_MODEL_SEED",
    "CLIPMIND_TEXT_RUNTIME",
    "CLIPMIND_ONNX_CACHE",
    "CLIPMIND_MODEL_CACHE",
    "CLIPMIND_WHISPER_THREADS",
)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


@dataclass(frozen=True)
class TritonWheel:
    """Paths inside the installed nvidia-pytriton wheel."""

    server: Path
    backend_lib: Path
    backend_utils: Path
    stub: Path
    libs: Path

    @classmethod
    def locate(cls) -> TritonWheel:
        root = _package_dir("pytriton") / "tritonserver"
        wheel = cls(
            server=root / "bin" / "tritonserver",
            backend_lib=root / "backends" / "python" / "libtriton_python.so",
            backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
            stub=root / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub",
            libs=root.parent.parent / "nvidia_pytriton.libs",
        )
        missing = [
            str(p)
            for p in (wheel.server, wheel.backend_lib, wheel.backend_utils, wheel.stub, wheel.libs)
            if not p.exists()
        ]
        if missing:
            raise LaunchError(f"nvidia-pytriton wheel is incomplete, missing: {', '.join(missing)}")
        return wheel


def default_stub_site() -> Path:
    """Where the stub's NumPy 1.x lives: ``$CLIPMIND_TRITON_STUB_SITE`` or ``<venv>/triton-stub-site``."""
    return Path(os.environ.get(STUB_SITE_ENV) or Path(sys.prefix) / "triton-stub-site")


def ensure_stub_site(path: Path) -> Path:
    """Make sure ``path`` holds NumPy 1.x for the stub; install it there (uv or pip ``--target``) if not."""
    if _has_numpy1(path):
        return path
    path.mkdir(parents=True, exist_ok=True)
    commands: list[list[str]] = []
    uv = shutil.which("uv")
    if uv:
        commands.append([uv, "pip", "install", "--python", sys.executable, "--target", str(path), STUB_NUMPY])
    commands.append([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(path), STUB_NUMPY])
    errors = []
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
        if result.returncode == 0 and _has_numpy1(path):
            return path
        errors.append(f"$ {' '.join(command)}\n{result.stderr.strip()[-800:]}")
    raise LaunchError(
        f"Triton's python backend stub needs NumPy 1.x in {path} and installing it failed. Create it with\n"
        f"  uv pip install --target {path} '{STUB_NUMPY}'\n"
        f"or point {STUB_SITE_ENV} at a directory holding NumPy 1.x.\n" + "\n".join(errors)
    )


def _has_numpy1(path: Path) -> bool:
    return any(path.glob("numpy-1.*.dist-info"))


def _venv_site_packages() -> list[str]:
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def discover_models(repository: Path) -> list[str]:
    """Model names of a repository: the sub-directories holding a config.pbtxt."""
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class EmbeddedTriton(OwnsProcess):
    """tritonserver on CPU serving ``model_repository`` (explicit model control, all models loaded)."""

    work_dir: Path
    log_path: Path
    grpc_port: int
    http_port: int
    host: str = "127.0.0.1"
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    models: Sequence[str] | None = None
    stub_site: Path | None = None
    ready_timeout_s: float = 300.0
    # CLIPMIND_* model settings (MODEL_SETTINGS_ENV) for the models, over the launcher's own environment.
    model_env: Mapping[str, str] = field(default_factory=dict)
    _proc: ManagedProcess | None = field(default=None, init=False, repr=False)
    # Unlocks Triton's admin APIs; made per launch and kept nowhere (nothing of ClipMind needs them).
    _admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), init=False, repr=False)

    @property
    def url(self) -> str:
        """gRPC endpoint ``host:port`` (what ``CLIPMIND_TRITON_URL`` holds)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> float:
        wheel = TritonWheel.locate()
        repository = self.model_repository.resolve()
        models = list(self.models) if self.models is not None else discover_models(repository)
        if not models:
            raise LaunchError(f"no models (*/config.pbtxt) in {repository}")
        backends = self._assemble_backends(wheel)
        stub_site = ensure_stub_site(self.stub_site or default_stub_site())
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(wheel.libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONPATH"] = os.pathsep.join([str(stub_site), *_venv_site_packages(), str(REPO_ROOT)])
        unknown = sorted(set(self.model_env) - set(MODEL_SETTINGS_ENV))
        if unknown:
            raise LaunchError(f"model_env holds {', '.join(unknown)}; only {', '.join(MODEL_SETTINGS_ENV)} apply")
        env.update({key: str(value) for key, value in self.model_env.items()})
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        argv = [
            str(wheel.server),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--model-control-mode=explicit",
            *[f"--load-model={name}" for name in models],
            # Loading, unloading and replacing models, shared memory, statistics, tracing and log settings are
            # refused (403 / UNAVAILABLE) without a header only this launch knew: the services only infer.
            f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={self._admin_key}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={self._admin_key}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]
        self._proc = ManagedProcess(
            name="triton", argv=argv, log_path=self.log_path, env=env, cwd=self.work_dir, stop_timeout_s=20.0
        )
        self._proc.start()

        def ready() -> bool:
            return _http_ok(f"{self.http_url}/v2/health/ready") and all(
                _http_ok(f"{self.http_url}/v2/models/{name}/ready") for name in models
            )

        return self._proc.wait_ready(ready, self.ready_timeout_s, interval_s=0.5)


    def model_config(self, name: str) -> dict:
        with urllib.request.urlopen(f"{self.http_url}/v2/models/{name}/config", timeout=5) as resp:
            return json.loads(resp.read())

    def _assemble_backends(self, wheel: TritonWheel) -> Path:
        """``<work>/backends/python`` with the backend library, its utils and the 3.11 stub."""
        target = self.work_dir / "backends" / "python"
        target.mkdir(parents=True, exist_ok=True)
        for source in (wheel.backend_lib, wheel.backend_utils, wheel.stub):
            dest = target / source.name
            if (
                not dest.exists()
                or dest.stat().st_size != source.stat().st_size
                or dest.stat().st_mtime < source.stat().st_mtime
            ):
                shutil.copy2(source, dest)
        return target.parent
