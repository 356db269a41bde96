"""Triton python backend: CLIP image embeddings (services.models.clip.ClipModel, via triton_backend.load_clip) on CPU.

Input ``IMAGE`` [batch, 1] holds encoded image bytes; outputs ``EMBEDDING`` [batch, 512] (unit norm; zeros
for an image that failed), ``ERROR`` [batch, 1] ("" or why that image failed) and ``MODEL_ID`` [batch, 1].
Weights: ``CLIPMIND_CLIP_WEIGHTS`` / ``CLIPMIND_CLIP_ARCH`` / ``CLIPMIND_MODEL_SEED``, else the
config.pbtxt parameters. Conventions (off, errors): services/models/triton_backend.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The ClipMind checkout this repository belongs to (an installed ClipMind serves as well).
sys.path.append(str(Path(__file__).resolve().parents[3]))
from services.models.stub_env import prepare

prepare()

import triton_python_backend_utils as pb_utils  # noqa: E402

from services.inference import contract  # noqa: E402
from services.models import triton_backend  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        triton_backend.set_threads(config)
        self.server = triton_backend.Server(
            pb_utils,
            contract.CLIP_IMAGE,
            lambda: triton_backend.load_clip(config),
        )

    def execute(self, requests: list) -> list:
        return self.server.images(requests)

    def finalize(self) -> None:
        self.server.model = None
