"""Text embeddings behind a small Protocol, with the Triton gRPC adapter.

Domain code asks for a ``TextEmbedder`` and gets numpy arrays; it never sees tritonclient or grpc.
``TritonTextEmbedder`` talks to the ``sbert`` model of model_repository/ (raw strings in, unit-norm
384-d float32 vectors out), splits large inputs into requests of at most ``max_batch`` texts, puts a
deadline on each call, and maps failures onto the domain error tree:

* server unreachable, model not ready, deadline passed -> ``Unavailable`` / ``DeadlineExceeded``
* empty or whitespace text (checked before sending, and by the model) -> ``InvalidArgument``
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from services.common.errors import (
    DeadlineExceeded,
    FieldViolation,
    Internal,
    InvalidArgument,
    Unavailable,
)

SBERT_MODEL_ID = "sbert/all-MiniLM-L6-v2"
SBERT_DIM = 384
TRITON_MAX_BATCH = 64


@runtime_checkable
class TextEmbedder(Protocol):
    """Turns texts into unit-norm vectors (``len(texts) x dim`` float32)."""

    model_id: str
    dim: int

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def validate_texts(texts: Sequence[str], field: str = "texts") -> None:
    """Raise ``InvalidArgument`` naming every empty or whitespace-only entry."""
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise InvalidArgument(
            message=f"{field}: {len(bad)} text(s) are empty or whitespace",
            reason="EMPTY_TEXT",
            field_violations=[FieldViolation(f"{field}[{i}]", "must contain visible characters") for i in bad],
        )


class TritonTextEmbedder:
    """``TextEmbedder`` served by Triton over gRPC (``tritonclient.grpc.aio``)."""

    def __init__(
        self,
        url: str,
        model_name: str = "sbert",
        timeout_s: float = 30.0,
        *,
        model_id: str = SBERT_MODEL_ID,
        dim: int = SBERT_DIM,
        max_batch: int = TRITON_MAX_BATCH,
    ) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.model_id = model_id
        self.dim = dim
        self.max_batch = max_batch
        self._client: Any = grpcclient.InferenceServerClient(url=url)
        self._module: Any = grpcclient

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        validate_texts(texts)
        chunks = [texts[i : i + self.max_batch] for i in range(0, len(texts), self.max_batch)]
        vectors = await asyncio.gather(*(self._infer(chunk) for chunk in chunks))
        return np.concatenate(vectors, axis=0)

    async def ready(self) -> bool:
        """True when the server is up and the model is loaded; picks up ``model_id`` from its config."""
        from tritonclient.utils import InferenceServerException

        try:
            if not await self._client.is_model_ready(self.model_name, client_timeout=self.timeout_s):
                return False
            config = await self._client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException:
            return False
        model_id = config.get("config", {}).get("parameters", {}).get("model_id", {}).get("string_value")
        if model_id:
            self.model_id = model_id
        return True

    async def close(self) -> None:
        await self._client.close()

    async def _infer(self, texts: list[str]) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        batch = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
        request = self._module.InferInput("TEXT", list(batch.shape), "BYTES")
        request.set_data_from_numpy(batch)
        try:
            result = await self._client.infer(
                self.model_name,
                [request],
                outputs=[self._module.InferRequestedOutput("EMBEDDING")],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise _map_error(exc, self.url, self.model_name) from exc
        vectors = result.as_numpy("EMBEDDING")
        if vectors is None or vectors.shape != (len(texts), self.dim):
            shape = None if vectors is None else vectors.shape
            raise Internal(
                message=f"{self.model_name} returned shape {shape}, expected ({len(texts)}, {self.dim})",
                reason="BAD_MODEL_OUTPUT",
            )
        return vectors.astype(np.float32, copy=False)


def _map_error(exc: Any, url: str, model: str) -> Exception:
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if "INVALID_ARGUMENT" in status:
        return InvalidArgument(message=f"{model}: {message}", reason="INVALID_INFERENCE_INPUT")
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
        return DeadlineExceeded(message=f"{model} at {url} did not answer in time", reason="INFERENCE_TIMEOUT")
    if "UNAVAILABLE" in status or "NOT_FOUND" in status or "not found" in message or "unavailable" in message:
        return Unavailable(message=f"{model} at {url} is unavailable: {message}", reason="INFERENCE_UNAVAILABLE")
    return Unavailable(message=f"{model} at {url} failed: {status} {message}", reason="INFERENCE_FAILED")
