"""Triton python backend: Whisper speech recognition on CPU, the model ``services.models.whisper.load_whisper``
picks (faster-whisper for CTranslate2 weights, openai-whisper for ``.pt`` and random weights).

Input ``AUDIO`` [samples] float32 mono at the ``sample_rate`` parameter (16 kHz); outputs ``SEGMENTS`` [1]
(JSON list of {"start", "end", "text"}, seconds), ``LANGUAGE`` [1] and ``MODEL_ID`` [1]. Zero samples is a
status probe. Weights: ``CLIPMIND_WHISPER_WEIGHTS`` / ``CLIPMIND_MODEL_SEED``, else the config.pbtxt
parameters. Conventions (off, errors): services/models/triton_backend.py.
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
from services.models.whisper import load_whisper  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        triton_backend.set_threads(config)
        self.sample_rate = int(triton_backend.parameter(config, "sample_rate", "16000"))
        sample_len = int(triton_backend.parameter(config, "sample_len", "0")) or None
        self.server = triton_backend.Server(
            pb_utils,
            contract.WHISPER,
            lambda: load_whisper(
                weights=triton_backend.setting(config, contract.WHISPER_WEIGHTS_SETTING, "weights"),
                seed=triton_backend.seed(config),
                sample_len=sample_len,
                threads=int(triton_backend.setting(config, contract.WHISPER_THREADS_SETTING, "cpu_threads", "0")),
            ),
        )

    def execute(self, requests: list) -> list:
        return self.server.audio(requests, self.sample_rate)

    def finalize(self) -> None:
        self.server.model = None
