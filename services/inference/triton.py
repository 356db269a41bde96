"""``Inference`` served by Triton over gRPC (``tritonclient.grpc.aio``).

Per-model readiness and ``model_id`` from each model's config, one deadline per call, retries on UNAVAILABLE
with jittered backoff inside that deadline, a circuit breaker that makes calls fail fast while Triton is
down, large inputs split to the model's ``max_batch_size``. Tensor and model names, and the "off" marker, are
those of services.inference.contract, which the python backends (services/models/triton_backend.py) use too.

Errors are the domain tree: ``Unavailable`` (server unreachable, circuit open, model not loaded),
``DeadlineExceeded``, ``InvalidArgument`` with field violations (``texts[3]``, ``images[2]``,
``sample_rate``), ``FailedPrecondition`` when a model is off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from opentelemetry.trace import SpanKind

from services.common.circuit import CircuitBreaker
from services.common.errors import (
    ClipMindError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unavailable,
)
from services.common.metrics import TRITON_LATENCY, track_circuit
from services.common.tracing import carrier as trace_carrier
from services.common.tracing import tracer
from services.inference import contract
from services.inference.contract import WEIGHTS_SETTING
from services.inference.ports import (
    CLIP_DIM,
    MODEL_NAMES,
    SBERT_DIM,
    WHISPER_SAMPLE_RATE,
    ModelName,
    ModelState,
    ModelStatus,
    Transcript,
)
from services.inference.validation import (
    empty_image_error,
    image_error,
    model_off,
    transcript_from,
    validate_audio,
    validate_texts,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SBERT_MODEL_ID = "sbert/all-MiniLM-L6-v2"
TRITON_MAX_BATCH = 64

#: ``Unavailable`` reasons: Triton as a whole cannot be reached (``CONNECTION_REASONS``: AutoInference falls
#: back on these), or it is up but does not serve the model (``MODEL_NOT_READY``: no switch of backends).
UNAVAILABLE = "INFERENCE_UNAVAILABLE"
CIRCUIT_OPEN = "INFERENCE_CIRCUIT_OPEN"
MODEL_NOT_READY = "MODEL_NOT_READY"
CONNECTION_REASONS = frozenset({UNAVAILABLE, CIRCUIT_OPEN})


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one call on UNAVAILABLE: ``attempts`` in all, jittered exponential backoff."""

    attempts: int = 3
    base_backoff_s: float = 0.05
    max_backoff_s: float = 0.5

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): full-range jitter in [50 %, 100 %]."""
        return min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


@dataclass
class _TritonModel:
    """What Triton says about one model: readiness, batch limit, identity, state."""

    name: ModelName
    state: ModelState
    model_id: str = ""
    max_batch: int = TRITON_MAX_BATCH
    detail: str = ""
    parameters: dict[str, str] | None = None


class TritonInference:
    """``Inference`` served by Triton over gRPC; every method is a coroutine and never blocks the loop."""

    backend = "triton"

    def __init__(
        self,
        url: str,
        timeout_s: float = 30.0,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 2.0,
        retry: RetryPolicy | None = None,
        max_parallel_requests: int = 4,
        max_batch: int | None = None,
        status_timeout_s: float = 5.0,
    ) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.url = url
        self.timeout_s = timeout_s
        self.status_timeout_s = status_timeout_s
        self.retry = retry or RetryPolicy()
        self.breaker = CircuitBreaker(failure_threshold, reset_timeout_s)
        track_circuit(self, url, lambda client: client.breaker)  # clipmind_triton_circuit_state, read on scrape
        self._max_batch_override = max_batch
        self._parallel = max_parallel_requests
        self._grpc: Any = grpcclient
        # Reconnect quickly once the server is back (gRPC's default backoff grows to two minutes).
        channel_args = [
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
            ("grpc.enable_retries", 0),
        ]
        self._client: Any = grpcclient.InferenceServerClient(url=url, channel_args=channel_args)
        self._models: dict[ModelName, _TritonModel] = {}

    # ---- Protocol -------------------------------------------------------------------------------

    async def status(self) -> dict[str, ModelStatus]:
        results = await asyncio.gather(*(self.model_status(name) for name in MODEL_NAMES))
        return {s.name: s for s in results}

    async def model_status(self, name: ModelName) -> ModelStatus:
        """One model's status; never raises for an unreachable server (that is state ``unavailable``)."""
        deadline = self._deadline(self.status_timeout_s)
        try:
            model = await self._model(name, deadline, refresh=True)
            if model.state != "unavailable" and not model.model_id:  # off has no id: asked again (cheap)
                await self._probe_identity(model, deadline)
        except FailedPrecondition:
            model = self._models[name]
        except ClipMindError as exc:
            return ModelStatus(name, "unavailable", backend=self.backend, detail=exc.message,
                               setting=WEIGHTS_SETTING[name])
        return ModelStatus(name, model.state, model.model_id, self.backend, model.detail, WEIGHTS_SETTING[name])

    async def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        return await self._embed_texts(contract.SBERT, texts, SBERT_DIM)

    async def embed_clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        return await self._embed_texts(contract.CLIP_TEXT, texts, CLIP_DIM)

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray | Exception]:
        images = list(images)
        results: list[np.ndarray | Exception] = [empty_image_error(i) for i in range(len(images))]
        todo = [i for i, image in enumerate(images) if image]
        if not images:
            return results
        deadline = self._deadline()
        model = await self._usable_model(contract.CLIP_IMAGE, deadline)
        if not todo:
            if model.state == "off":
                raise model_off(contract.CLIP_IMAGE, model.detail)
            return results
        chunks = [todo[i : i + model.max_batch] for i in range(0, len(todo), model.max_batch)]

        async def run(indices: list[int]) -> None:
            for index, outcome in zip(indices, await self._infer_images([images[i] for i in indices], deadline),
                                      strict=True):
                results[index] = outcome if isinstance(outcome, np.ndarray) else image_error(index, outcome)

        await self._gather([run(chunk) for chunk in chunks])
        return results

    async def transcribe(self, audio: np.ndarray, sample_rate: int = WHISPER_SAMPLE_RATE) -> Transcript:
        samples = validate_audio(audio, sample_rate)
        deadline = self._deadline()
        await self._usable_model(contract.WHISPER, deadline)
        result = await self._infer_audio(samples, deadline)
        language = _first_string(result.as_numpy(contract.LANGUAGE))
        segments = _decode_segments(result.as_numpy(contract.SEGMENTS))
        return transcript_from(language, segments)

    async def close(self) -> None:
        await self._client.close()

    # ---- health, used by AutoInference ----------------------------------------------------------

    async def ping(self, timeout_s: float = 1.0) -> bool:
        """True when the server answers and says it is ready; bypasses (and does not move) the breaker."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(await self._client.is_server_ready(client_timeout=timeout_s))
        except (TimeoutError, InferenceServerException):
            return False

    def reset(self) -> None:
        """Forget what we knew (the server may have restarted with other models) and close the breaker."""
        self._models.clear()
        self.breaker.reset()

    def known_model_id(self, name: ModelName) -> str | None:
        model = self._models.get(name)
        return model.model_id if model and model.model_id else None

    # ---- internals ------------------------------------------------------------------------------

    def _deadline(self, timeout_s: float | None = None) -> float:
        return asyncio.get_running_loop().time() + (self.timeout_s if timeout_s is None else timeout_s)

    async def _embed_texts(self, name: ModelName, texts: Sequence[str], dim: int) -> np.ndarray:
        texts = list(texts)
        validate_texts(texts)
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        deadline = self._deadline()
        model = await self._usable_model(name, deadline)
        chunks = [texts[i : i + model.max_batch] for i in range(0, len(texts), model.max_batch)]
        vectors = await self._gather([self._infer_texts(name, chunk, dim, deadline) for chunk in chunks])
        return np.concatenate(vectors, axis=0)

    async def _gather(self, jobs: list[Awaitable[T]]) -> list[T]:
        """Run jobs at most ``max_parallel_requests`` at a time; the first error cancels the rest."""
        limit = asyncio.Semaphore(self._parallel)

        async def bounded(job: Awaitable[T]) -> T:
            async with limit:
                return await job

        tasks = [asyncio.ensure_future(bounded(job)) for job in jobs]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _infer_texts(self, name: ModelName, texts: list[str], dim: int, deadline: float) -> np.ndarray:
        batch = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
        # sbert: its id is in its config
        outputs = (contract.EMBEDDING,) if name == contract.SBERT else (contract.EMBEDDING, contract.MODEL_ID)
        result = await self._infer(name, contract.TEXT, batch, "BYTES", outputs, deadline)
        return _checked_vectors(name, result.as_numpy(contract.EMBEDDING), len(texts), dim)

    async def _infer_images(self, images: list[bytes], deadline: float) -> list[np.ndarray | str]:
        """One request; per the clip_image contract, bad images come back as an ERROR string per item."""
        batch = np.array([[image] for image in images], dtype=np.object_)
        outputs = (contract.EMBEDDING, contract.ERROR, contract.MODEL_ID)
        result = await self._infer(contract.CLIP_IMAGE, contract.IMAGE, batch, "BYTES", outputs, deadline)
        vectors = _checked_vectors(contract.CLIP_IMAGE, result.as_numpy(contract.EMBEDDING), len(images), CLIP_DIM)
        errors = result.as_numpy(contract.ERROR)
        messages = [""] * len(images) if errors is None else [_to_str(e) for e in errors.reshape(-1)]
        return [contract.item_error_detail(msg) if msg else vectors[i] for i, msg in enumerate(messages)]

    async def _infer_audio(self, samples: np.ndarray, deadline: float) -> Any:
        """One clip per request (whisper has no batch dimension): AUDIO [samples] float32."""
        outputs = (contract.LANGUAGE, contract.SEGMENTS, contract.MODEL_ID)
        return await self._infer(contract.WHISPER, contract.AUDIO, samples, "FP32", outputs, deadline)

    async def _infer(
        self, name: ModelName, input_name: str, array: np.ndarray, datatype: str, outputs: Sequence[str],
        deadline: float,
    ) -> Any:
        """One inference request under the call's deadline and retry policy; notes the model id it reports."""
        inputs = [self._input(input_name, array, datatype)]
        requested = [self._grpc.InferRequestedOutput(n) for n in outputs]
        started, outcome = time.perf_counter(), "error"
        # One CLIENT span per request, retries included (a no-op while tracing is off); its W3C context goes as
        # request headers (gRPC metadata), for a Triton that traces.
        with tracer().start_as_current_span("triton.infer", kind=SpanKind.CLIENT, attributes={
            "clipmind.model": name, "rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
            "rpc.method": "ModelInfer", "server.address": self.url,
        }):
            headers = trace_carrier() or None
            try:
                result = await self._call(
                    name, deadline,
                    lambda timeout: self._client.infer(name, inputs, outputs=requested, client_timeout=timeout,
                                                       headers=headers),
                )
                outcome = "ok"
            finally:  # clipmind_triton_request_duration_seconds: the request with its retries, as the caller waits
                TRITON_LATENCY.labels(name, outcome).observe(time.perf_counter() - started)
        self._note_model_id(name, result)
        return result

    async def _probe_identity(self, model: _TritonModel, deadline: float) -> None:
        """Learn ``model_id`` and off/degraded/ready with the cheapest request each model answers (sbert
        names its id in its config): one text, one empty image (not decoded, no forward pass), no audio."""
        if model.name == contract.SBERT:
            return
        if model.name == contract.CLIP_TEXT:
            await self._infer_texts(contract.CLIP_TEXT, ["status"], CLIP_DIM, deadline)
        elif model.name == contract.CLIP_IMAGE:
            await self._infer_images([b""], deadline)
        elif model.name == contract.WHISPER:
            await self._infer_audio(np.zeros(0, np.float32), deadline)

    def _note_model_id(self, name: ModelName, result: Any) -> None:
        model_id = _first_string(result.as_numpy(contract.MODEL_ID)) if name != contract.SBERT else ""
        model = self._models.get(name)
        if model_id and model is not None:
            model.model_id = model_id
            model.state = "degraded" if "@random" in model_id else "ready"
            model.detail = "random weights (tests only)" if model.state == "degraded" else ""

    def _input(self, name: str, array: np.ndarray, datatype: str) -> Any:
        tensor = self._grpc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    async def _usable_model(self, name: ModelName, deadline: float) -> _TritonModel:
        model = await self._model(name, deadline)
        # A model known to be off is still asked: it answers MODEL_OFF at once (-> FailedPrecondition), and
        # a Triton restarted with weights is noticed without waiting for the cache to be dropped.
        if model.state == "unavailable":
            raise Unavailable(
                message=f"{name} is not ready on Triton at {self.url}: {model.detail}",
                reason=MODEL_NOT_READY,
                metadata={"model": name},
            )
        return model

    async def _model(self, name: ModelName, deadline: float, *, refresh: bool = False) -> _TritonModel:
        """Readiness and config of one model, cached until the server is seen down or ``refresh``."""
        cached = self._models.get(name)
        if cached is not None and cached.state in ("ready", "degraded", "off") and not refresh:
            return cached
        ready = await self._call(
            name, deadline, lambda timeout: self._client.is_model_ready(name, client_timeout=timeout)
        )
        if not ready:
            model = _TritonModel(name, "unavailable", detail="model is not loaded or not ready")
            self._models[name] = model
            return model
        config = await self._call(
            name, deadline, lambda timeout: self._client.get_model_config(name, as_json=True, client_timeout=timeout)
        )
        model = _model_from_config(name, config.get("config", {}), self._max_batch_override)
        if cached is not None and not model.model_id and (cached.model_id or cached.state == "off"):
            # Same server session (the cache is dropped on every connection failure): keep what calls and
            # probes learnt about the model's identity, so status() need not ask again.
            model.model_id, model.state, model.detail = cached.model_id, cached.state, cached.detail
        self._models[name] = model
        return model

    def _mark_off(self, name: str, message: str) -> None:
        model = self._models.get(name)  # type: ignore[call-overload]
        if model is not None:
            model.state = "off"
            model.model_id = ""
            model.detail = contract.off_detail(message)

    async def _call(self, name: str, deadline: float, attempt: Callable[[float], Awaitable[T]]) -> T:
        """One RPC under the call's deadline, the breaker and the retry policy; errors mapped."""
        from tritonclient.utils import InferenceServerException

        loop = asyncio.get_running_loop()
        tries = 0
        while True:
            if not self.breaker.allow():
                raise Unavailable(
                    message=f"Triton at {self.url} is unavailable (circuit open after "
                    f"{self.breaker.consecutive_failures} connection failures; "
                    f"next probe in {self.breaker.retry_after_s():.1f}s)",
                    reason=CIRCUIT_OPEN,
                    metadata={"url": self.url, "retry_after_s": f"{self.breaker.retry_after_s():.3f}"},
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.breaker.release_probe()
                raise _deadline_error(name, self.url)
            tries += 1
            recorded = False
            try:
                result = await attempt(remaining)
                self.breaker.record_success()
                recorded = True
                return result
            except InferenceServerException as exc:
                kind = _classify(exc)
                if kind == "off":
                    self._mark_off(name, str(exc.message() or exc))
                if kind != "connection":
                    # The server answered (or we gave up waiting): it says nothing against its health.
                    if kind == "deadline":
                        self.breaker.release_probe()
                    else:
                        self.breaker.record_success()
                    recorded = True
                    raise _map_error(exc, kind, name, self.url) from None
                self.breaker.record_failure()
                recorded = True
                self._models.clear()
                delay = self.retry.backoff(tries)
                if tries >= self.retry.attempts or loop.time() + delay >= deadline:
                    raise _map_error(exc, kind, name, self.url) from None
                log.debug("triton %s unavailable (try %d), retrying in %.3fs: %s", name, tries, delay, exc)
                await asyncio.sleep(delay)
            finally:
                if not recorded:  # cancelled, or a client-side error: free the half-open probe slot
                    self.breaker.release_probe()


def _model_from_config(name: ModelName, config: dict[str, Any], max_batch_override: int | None) -> _TritonModel:
    parameters = {
        key: str(value.get("string_value", "")) for key, value in (config.get("parameters") or {}).items()
    }
    max_batch = int(config.get("max_batch_size") or 0) or TRITON_MAX_BATCH
    if max_batch_override:
        max_batch = min(max_batch, max_batch_override)
    state: ModelState = "ready"
    declared = parameters.get("state", "").strip().lower()
    if declared in ("degraded", "off"):
        state = declared  # type: ignore[assignment]
    elif parameters.get("degraded", "").strip().lower() in ("1", "true", "yes"):
        state = "degraded"
    return _TritonModel(
        name=name,
        state=state,
        model_id=parameters.get("model_id", "") or (SBERT_MODEL_ID if name == contract.SBERT else ""),
        max_batch=max_batch,
        detail=parameters.get("detail", ""),
        parameters=parameters,
    )


def _classify(exc: Any) -> str:
    """``connection`` | ``deadline`` | ``invalid`` | ``model`` | ``other`` for an InferenceServerException."""
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
        return "deadline"
    if "INVALID_ARGUMENT" in status:
        return "invalid"
    if "NOT_FOUND" in status:
        return "model"
    if contract.OFF_GRPC_STATUS in status and contract.OFF_MARKER in message:
        return "off"
    if "UNAVAILABLE" in status:
        # Triton answers UNAVAILABLE for a model it does not serve; gRPC for a server it cannot reach.
        return "model" if "model" in message.lower() else "connection"
    if "CANCELLED" in status and "Socket closed" in message:
        return "connection"
    return "other"


def _deadline_error(name: str, url: str) -> DeadlineExceeded:
    return DeadlineExceeded(
        message=f"{name} at {url} did not answer in time", reason="INFERENCE_TIMEOUT", metadata={"model": name}
    )


def _map_error(exc: Any, kind: str, name: str, url: str) -> ClipMindError:
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    if kind == "deadline":
        return _deadline_error(name, url)
    if kind == "invalid":
        return InvalidArgument(message=f"{name}: {message}", reason="INVALID_INFERENCE_INPUT")
    if kind == "off" and name in WEIGHTS_SETTING:
        return model_off(name, contract.off_detail(message))
    if kind == "connection":
        return Unavailable(
            message=f"Triton at {url} is unavailable: {message}",
            reason=UNAVAILABLE,
            metadata={"url": url, "model": name},
        )
    if kind == "model":
        return Unavailable(
            message=f"{name} is not served by Triton at {url}: {message}",
            reason=MODEL_NOT_READY,
            metadata={"model": name},
        )
    return Internal(message=f"{name} at {url} failed: {status} {message}", reason="INFERENCE_FAILED")


def _checked_vectors(name: str, vectors: np.ndarray | None, n: int, dim: int) -> np.ndarray:
    if vectors is None or vectors.shape != (n, dim):
        shape = None if vectors is None else vectors.shape
        raise Internal(message=f"{name} returned shape {shape}, expected ({n}, {dim})", reason="BAD_MODEL_OUTPUT")
    return vectors.astype(np.float32, copy=False)


def _to_str(item: object) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)


def _first_string(array: np.ndarray | None) -> str:
    return "" if array is None or array.size == 0 else _to_str(array.reshape(-1)[0])


def _decode_segments(array: np.ndarray | None) -> list[tuple[float, float, str]]:
    """SEGMENTS is one JSON document: ``[{"start": s, "end": s, "text": str}, ...]``."""
    raw = _first_string(array)
    return [
        (float(s[contract.SEGMENT_START]), float(s[contract.SEGMENT_END]), str(s[contract.SEGMENT_TEXT]))
        for s in (json.loads(raw) if raw else [])
    ]
