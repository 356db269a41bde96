"""What the Triton python-backend models (model_repository/*/1/model.py) share: settings, the "off" state,
and the request loops around the model classes. ``pb_utils`` (only importable inside the stub) is passed
in, so this module imports neither tritonclient nor the stub's utils.

Conventions of every ClipMind model served by Triton:

* Weights come from the ``CLIPMIND_*`` environment of tritonserver (``CLIPMIND_CLIP_WEIGHTS``,
  ``CLIPMIND_CLIP_ARCH``, ``CLIPMIND_WHISPER_WEIGHTS``, ``CLIPMIND_SBERT_WEIGHTS``, ``CLIPMIND_MODEL_SEED``),
  falling back to the model's config.pbtxt ``parameters``; both empty → the model's default.
* Tensor and model names, the settings and the ``MODEL_OFF`` marker are those of services.inference.contract,
  which the client (services.inference.triton) uses too.
* Every successful response carries ``MODEL_ID`` (TYPE_STRING, one per item) — the id to store next to
  vectors. Random weights (tests only) show as ``…@random-seed<N>`` (the model is degraded).
* **Off**: when the *default* weights cannot be had, the model still loads (so Triton and the other models
  run) and answers every request with an error whose message starts with ``MODEL_OFF`` and names the
  setting, with code UNSUPPORTED (gRPC ``UNIMPLEMENTED``). A client tells "off" (this error) from
  "Triton down" (connection refused / ``UNAVAILABLE`` / model not ready).
* Explicitly configured weights that are missing or broken make ``initialize`` raise: the model fails to
  load and, with ``--exit-on-error``, tritonserver stops at startup with the setting named in its log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from services.inference import contract
from services.models.weights import WeightsUnavailable


def parameter(model_config: dict, key: str, default: str = "") -> str:
    value = model_config.get("parameters", {}).get(key, {}).get("string_value", "")
    return str(value).strip() or default


def setting(model_config: dict, env_key: str, param_key: str, default: str = "") -> str:
    """``$env_key`` when set and non-empty, else the config.pbtxt parameter, else ``default``."""
    return os.environ.get(env_key, "").strip() or parameter(model_config, param_key, default)


def seed(model_config: dict) -> int:
    return int(setting(model_config, contract.MODEL_SEED_SETTING, "seed", "0"))


def load_clip(model_config: dict) -> Any:
    """The CLIP model that clip_image and clip_text serve: ``CLIPMIND_CLIP_ARCH`` / ``CLIPMIND_CLIP_WEIGHTS`` /
    ``CLIPMIND_MODEL_SEED``, else the config.pbtxt parameters."""
    from services.models.clip import ClipModel

    return ClipModel.load(
        arch=setting(model_config, contract.CLIP_ARCH_SETTING, "arch", "ViT-B-32"),
        weights=setting(model_config, contract.CLIP_WEIGHTS_SETTING, "weights"),
        seed=seed(model_config),
    )


def set_threads(model_config: dict) -> None:
    threads = int(parameter(model_config, "torch_threads", "0"))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def off_message(model_name: str, problem: WeightsUnavailable) -> str:
    detail = f"{model_name} is off, its weights are unavailable ({problem.setting}): {problem.detail}"
    return contract.off_message(detail)


def decode_strings(raw: np.ndarray) -> list[str]:
    return [item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item) for item in raw]


def _ids(model_id: str, n: int) -> np.ndarray:
    return np.array([[model_id.encode()] for _ in range(n)], dtype=np.object_)


class Server:
    """The request loop of one model instance: holds the loaded model or the reason it is off."""

    def __init__(self, pb_utils: Any, name: str, loader: Callable[[], Any]) -> None:
        self.pb = pb_utils
        self.name = name
        self.model: Any = None
        self.off = ""
        try:
            self.model = loader()
        except WeightsUnavailable as problem:
            self.off = off_message(name, problem)
            pb_utils.Logger.log_warn(self.off)
            return
        state = "degraded (random weights, tests only)" if self.model.degraded else "ready"
        pb_utils.Logger.log_info(f"{name}: loaded {self.model.model_id}, {state}")

    def _error(self, message: str, code: str = "INTERNAL") -> Any:
        error = self.pb.TritonError(message, getattr(self.pb.TritonError, code))
        return self.pb.InferenceResponse(output_tensors=[], error=error)

    def _all(self, requests: Sequence[Any], message: str, code: str) -> list:
        return [self._error(message, code) for _ in requests]

    def texts(self, requests: Sequence[Any]) -> list:
        """TEXT [n,1] → EMBEDDING [n,dim], MODEL_ID [n,1]; a request with an empty text fails alone."""
        if self.off:
            return self._all(requests, self.off, contract.OFF_ERROR_CODE)
        batches: list[list[str] | None] = []
        errors: dict[int, str] = {}
        for i, request in enumerate(requests):
            texts = decode_strings(self.pb.get_input_tensor_by_name(request, contract.TEXT).as_numpy().reshape(-1))
            bad = [j for j, text in enumerate(texts) if not text.strip()]
            if bad:
                errors[i] = contract.item_error(
                    contract.TEXT, bad[0], "is empty or whitespace; every text must hold a visible character"
                )
                batches.append(None)
            else:
                batches.append(texts)
        flat = [text for texts in batches if texts for text in texts]
        try:
            vectors = self.model.embed_texts(flat) if flat else np.zeros((0, self.model.dim), np.float32)
        except Exception as exc:
            return self._all(requests, f"{self.name}: {type(exc).__name__}: {exc}", "INTERNAL")
        responses = []
        offset = 0
        for i, batch in enumerate(batches):
            if batch is None:
                responses.append(self._error(errors[i], "INVALID_ARG"))
                continue
            chunk = np.ascontiguousarray(vectors[offset : offset + len(batch)], dtype=np.float32)
            offset += len(batch)
            responses.append(
                self.pb.InferenceResponse(
                    output_tensors=[
                        self.pb.Tensor(contract.EMBEDDING, chunk),
                        self.pb.Tensor(contract.MODEL_ID, _ids(self.model.model_id, len(batch))),
                    ]
                )
            )
        return responses

    def images(self, requests: Sequence[Any]) -> list:
        """IMAGE [n,1] → EMBEDDING [n,dim] (zeros where undecodable), ERROR [n,1] ("" when fine), MODEL_ID [n,1]."""
        if self.off:
            return self._all(requests, self.off, contract.OFF_ERROR_CODE)
        per_request = [
            [bytes(item) for item in self.pb.get_input_tensor_by_name(r, contract.IMAGE).as_numpy().reshape(-1)]
            for r in requests
        ]
        flat = [image for images in per_request for image in images]
        try:
            results = self.model.embed_images(flat)
        except Exception as exc:
            return self._all(requests, f"{self.name}: {type(exc).__name__}: {exc}", "INTERNAL")
        responses = []
        offset = 0
        for images in per_request:
            chunk = results[offset : offset + len(images)]
            offset += len(images)
            vectors = np.zeros((len(images), self.model.dim), np.float32)
            errors = np.empty((len(images), 1), dtype=np.object_)
            for j, result in enumerate(chunk):
                if isinstance(result, str):
                    # The model numbers images across the whole dynamic batch; renumber within this request.
                    errors[j, 0] = contract.item_error(contract.IMAGE, j, contract.item_error_detail(result)).encode()
                else:
                    vectors[j] = result
                    errors[j, 0] = b""
            responses.append(
                self.pb.InferenceResponse(
                    output_tensors=[
                        self.pb.Tensor(contract.EMBEDDING, vectors),
                        self.pb.Tensor(contract.ERROR, errors),
                        self.pb.Tensor(contract.MODEL_ID, _ids(self.model.model_id, len(images))),
                    ]
                )
            )
        return responses

    def audio(self, requests: Sequence[Any], sample_rate: int) -> list:
        """AUDIO [samples] → SEGMENTS [1] (JSON list of {start,end,text}), LANGUAGE [1], MODEL_ID [1].

        Zero samples is a status probe: answered with ``[]`` and language "" without running the model.
        """
        if self.off:
            return self._all(requests, self.off, contract.OFF_ERROR_CODE)
        responses = []
        for request in requests:
            audio = self.pb.get_input_tensor_by_name(request, contract.AUDIO).as_numpy()
            try:
                if audio.size == 0:
                    language, segments = "", []
                else:
                    language, segments = self.model.transcribe(audio, sample_rate)
            except ValueError as exc:
                responses.append(self._error(f"{contract.AUDIO}: {exc}", "INVALID_ARG"))
                continue
            except Exception as exc:
                responses.append(self._error(f"{self.name}: {type(exc).__name__}: {exc}", "INTERNAL"))
                continue
            start, end, text = contract.SEGMENT_START, contract.SEGMENT_END, contract.SEGMENT_TEXT
            payload = json.dumps([{start: s, end: e, text: t} for s, e, t in segments], ensure_ascii=False)
            responses.append(
                self.pb.InferenceResponse(
                    output_tensors=[
                        self.pb.Tensor(contract.SEGMENTS, np.array([payload.encode()], dtype=np.object_)),
                        self.pb.Tensor(contract.LANGUAGE, np.array([language.encode()], dtype=np.object_)),
                        self.pb.Tensor(contract.MODEL_ID, np.array([self.model.model_id.encode()], dtype=np.object_)),
                    ]
                )
            )
        return responses
