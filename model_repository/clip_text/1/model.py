"""Triton python backend: CLIP text embeddings (services.models.clip.ClipModel) on CPU.

Input ``TEXT`` [batch, 1] raw UTF-8 strings (the CLIP tokenizer runs here); outputs ``EMBEDDING``
[batch, 512] unit norm and ``MODEL_ID`` [batch, 1]. A request holding an empty text fails alone
(INVALID_ARG). Weights: ``CLIPMIND_CLIP_WEIGHTS`` / ``CLIPMIND_CLIP_ARCH`` / ``CLIPMIND_MODEL_SEED``, else
the config.pbtxt parameters. Conventions (off, errors): services/models/triton_backend.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _bootstrap() -> None:
    """Make the virtualenv and the ClipMind checkout importable inside the python backend stub.

    The stub runs its interpreter isolated (``-I``), which drops ``PYTHONPATH``; the launcher names the
    virtualenv site dirs and the repository root there, so add each as a site dir (``.pth`` files apply),
    ahead of the system dist-packages. Without ``PYTHONPATH`` (NVIDIA container with ClipMind installed)
    the repository root next to model_repository/ is tried last.
    """
    import site
    import sys

    before = list(sys.path)
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and entry not in before and os.path.isdir(entry):
            site.addsitedir(entry)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    repo_root = str(Path(__file__).resolve().parents[3])
    if (Path(repo_root) / "services" / "models").is_dir() and repo_root not in sys.path:
        sys.path.append(repo_root)


_bootstrap()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import triton_python_backend_utils as pb_utils  # noqa: E402

from services.models import triton_backend  # noqa: E402
from services.models.clip import ClipModel  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        triton_backend.set_threads(config)
        self.server = triton_backend.Server(
            pb_utils,
            "clip_text",
            lambda: ClipModel.load(
                arch=triton_backend.setting(config, "CLIPMIND_CLIP_ARCH", "arch", "ViT-B-32"),
                weights=triton_backend.setting(config, "CLIPMIND_CLIP_WEIGHTS", "weights"),
                seed=triton_backend.seed(config),
            ),
        )

    def execute(self, requests: list) -> list:
        return self.server.texts(requests)

    def finalize(self) -> None:
        self.server.model = None
