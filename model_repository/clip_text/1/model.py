"""Triton python backend: CLIP text embeddings (services.models.clip.ClipModel, via triton_backend.load_clip) on CPU.

Input ``TEXT`` [batch, 1] raw UTF-8 strings (the CLIP tokenizer runs here); outputs ``EMBEDDING``
[batch, 512] unit norm and ``MODEL_ID`` [batch, 1]. A request holding an empty text fails alone
(INVALID_ARG). Weights: ``CLIPMIND_CLIP_WEIGHTS`` / ``CLIPMIND_CLIP_ARCH`` / ``CLIPMIND_MODEL_SEED``, else
the config.pbtxt parameters. Conventions (off, errors): services/models/triton_backend.py.
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
        self.server = triton_backend.Server(pb_utils, contract.CLIP_TEXT, lambda: self._load(config))

    @staticmethod
    def _load(config: dict) -> object:
        model = triton_backend.load_clip(config)
        # On CPU the texts go through ONNX Runtime (services.models.onnx_text): prepared now, not on a query.
        pb_utils.Logger.log_info(f"{contract.CLIP_TEXT}: texts encoded by {model.text_runtime}")
        return model

    def execute(self, requests: list) -> list:
        return self.server.texts(requests)

    def finalize(self) -> None:
        self.server.model = None
