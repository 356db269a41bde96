"""Triton python backend: Sentence-BERT (all-MiniLM-L6-v2) text embeddings (services.models.sbert) on CPU.

Input ``TEXT`` (TYPE_STRING, [batch, 1]) holds raw UTF-8 strings; the model owns tokenization, mean
pooling and L2 normalisation, so clients never need a tokenizer. Outputs ``EMBEDDING`` [batch, 384]
float32 with unit norm and ``MODEL_ID`` [batch, 1].

Weights are loaded offline from ``CLIPMIND_SBERT_WEIGHTS``, else the ``weights`` parameter of
config.pbtxt; the ``model_id`` parameter is the id of the default weights, which callers record next to
stored vectors. A request holding an empty or whitespace-only text gets its own ``TritonError``
(INVALID_ARG) while the other requests of the same dynamic batch are answered.
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
from services.models.sbert import DEFAULT_WEIGHTS, SbertModel  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        triton_backend.set_threads(config)
        self.server = triton_backend.Server(pb_utils, contract.SBERT, lambda: self._load(config))

    @staticmethod
    def _load(config: dict) -> SbertModel:
        model = SbertModel.load(
            weights=triton_backend.setting(config, contract.SBERT_WEIGHTS_SETTING, "weights", DEFAULT_WEIGHTS),
            max_seq_length=int(triton_backend.parameter(config, "max_seq_length", "256")),
        )
        # On CPU the texts go through ONNX Runtime (services.models.onnx_text): prepared now, not on a request.
        pb_utils.Logger.log_info(f"{contract.SBERT}: texts encoded by {model.runtime}")
        return model

    def execute(self, requests: list) -> list:
        return self.server.texts(requests)

    def finalize(self) -> None:
        self.server.model = None
