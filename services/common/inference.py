"""Inference backends behind the one ``Inference`` Protocol (services.common.inference_types).

* :class:`TritonInference` talks to Triton over gRPC (``tritonclient.grpc.aio``): per-model readiness
  and ``model_id`` from each model's config, one deadline per call, retries on UNAVAILABLE with jittered
  backoff inside that deadline, a circuit breaker that makes calls fail fast while Triton is down, large
  inputs split to the model's ``max_batch_size``.
* ``TorchInference`` (services.common.inference_torch) runs the same model classes in-process.
* :class:`AutoInference` uses Triton while it is reachable, falls back to torch when it is not, and goes
  back to Triton once a background probe sees it healthy again.
* :func:`make_inference` picks one of them from ``settings.inference_backend``.

Errors are the domain tree: ``Unavailable`` (server unreachable, circuit open, model not loaded),
``DeadlineExceeded``, ``InvalidArgument`` with field violations (``texts[3]``, ``images[2]``,
``sample_rate``), ``FailedPrecondition`` when a model is off. :class:`SentenceEmbedder` adapts any
``Inference`` to the older ``TextEmbedder`` Protocol (``embed_texts``/``ready``/``model_id``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from services.common.circuit import CircuitBreaker
from services.common.errors import (
    ClipMindError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    Unavailable,
)
from services.common.inference_types import (
    CLIP_DIM,
    MODEL_NAMES,
    SBERT_DIM,
    WHISPER_SAMPLE_RATE,
    Inference,
    ModelName,
    ModelState,
    ModelStatus,
    Transcript,
    TranscriptSegment,
)

if TYPE_CHECKING:
    from services.common.config import CommonSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

SBERT_MODEL_ID = "sbert/all-MiniLM-L6-v2"
TRITON_MAX_BATCH = 64

#: The setting that provides each model's weights (named in statuses and errors).
WEIGHTS_SETTING: dict[ModelName, str] = {
    "clip_image": "CLIPMIND_CLIP_WEIGHTS",
    "clip_text": "CLIPMIND_CLIP_WEIGHTS",
    "sbert": "CLIPMIND_SBERT_WEIGHTS",
    "whisper": "CLIPMIND_WHISPER_WEIGHTS",
}

#: Message prefix of the error a Triton model answers with when it is off (services/models/triton_backend.py).
OFF_MARKER = "MODEL_OFF"

#: ``Unavailable`` reasons that mean "the backend as a whole cannot be reached" (AutoInference falls back
#: on these); a model that is merely not loaded is ``MODEL_NOT_READY`` and does not switch backends.
CONNECTION_REASONS = frozenset({"INFERENCE_UNAVAILABLE", "INFERENCE_CIRCUIT_OPEN"})


# --------------------------------------------------------------------------------------------------
# Validation shared by every backend (so both answer bad input the same way, before any model runs)


def validate_texts(texts: Sequence[str], field: str = "texts") -> None:
    """Raise ``InvalidArgument`` naming every empty or whitespace-only entry (``texts[i]``)."""
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise InvalidArgument(
            message=f"{field}: {len(bad)} text(s) are empty or whitespace",
            reason="EMPTY_TEXT",
            field_violations=[FieldViolation(f"{field}[{i}]", "must contain visible characters") for i in bad],
        )


def empty_image_error(index: int) -> InvalidArgument:
    return image_error(index, "is empty")


def image_error(index: int, description: str) -> InvalidArgument:
    """The per-item error of ``embed_images``: one bad image, named ``images[i]``."""
    path = f"images[{index}]"
    return InvalidArgument(
        message=f"{path}: {description}",
        reason="UNDECODABLE_IMAGE",
        field_violations=[FieldViolation(path, description)],
    )


def validate_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 audio at 16 kHz, as a contiguous 1-D array; anything else is ``InvalidArgument``."""
    if sample_rate != WHISPER_SAMPLE_RATE:
        raise InvalidArgument(
            message=f"sample_rate: {sample_rate} Hz given, Whisper needs {WHISPER_SAMPLE_RATE} Hz; resample first",
            reason="BAD_SAMPLE_RATE",
            field_violations=[FieldViolation("sample_rate", f"must be {WHISPER_SAMPLE_RATE}")],
        )
    array = np.asarray(audio)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.floating):
        raise InvalidArgument(
            message=f"audio: expected non-empty 1-D float samples, got shape {array.shape} {array.dtype}",
            reason="BAD_AUDIO",
            field_violations=[FieldViolation("audio", "must be non-empty mono float32 samples")],
        )
    samples = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise InvalidArgument(
            message="audio: holds NaN or infinite samples",
            reason="BAD_AUDIO",
            field_violations=[FieldViolation("audio", "samples must be finite")],
        )
    return samples


def item_error_detail(message: str) -> str:
    """``"images[3] is not a decodable image: …"`` → ``"is not a decodable image: …"``: the model numbers
    items within its own request; callers re-add the caller's index (``images[i]``)."""
    for prefix in ("images[", "IMAGE["):
        if message.startswith(prefix) and "] " in message:
            return message.split("] ", 1)[1]
    return message


def model_off(name: ModelName, detail: str) -> FailedPrecondition:
    setting = WEIGHTS_SETTING[name]
    return FailedPrecondition(
        message=f"{name} is off: {detail}. Set {setting} to enable it.",
        reason="MODEL_OFF",
        metadata={"model": name, "setting": setting},
    )


def transcript_from(language: str, segments: Sequence[Any]) -> Transcript:
    return Transcript(
        language=str(language),
        segments=[TranscriptSegment(float(s[0]), float(s[1]), str(s[2]).strip()) for s in segments],
    )


# --------------------------------------------------------------------------------------------------
# Triton


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
        return await self._embed_texts("sbert", texts, SBERT_DIM)

    async def embed_clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        return await self._embed_texts("clip_text", texts, CLIP_DIM)

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray | Exception]:
        images = list(images)
        results: list[np.ndarray | Exception] = [empty_image_error(i) for i in range(len(images))]
        todo = [i for i, image in enumerate(images) if image]
        if not images:
            return results
        deadline = self._deadline()
        model = await self._usable_model("clip_image", deadline)
        if not todo:
            if model.state == "off":
                raise model_off("clip_image", model.detail)
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
        await self._usable_model("whisper", deadline)
        result = await self._infer_audio(samples, deadline)
        language = _first_string(result.as_numpy("LANGUAGE"))
        segments = _decode_segments(result.as_numpy("SEGMENTS"))
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
        outputs = ("EMBEDDING",) if name == "sbert" else ("EMBEDDING", "MODEL_ID")  # sbert: id is in its config
        result = await self._infer(name, "TEXT", batch, "BYTES", outputs, deadline)
        return _checked_vectors(name, result.as_numpy("EMBEDDING"), len(texts), dim)

    async def _infer_images(self, images: list[bytes], deadline: float) -> list[np.ndarray | str]:
        """One request; per the clip_image contract, bad images come back as an ERROR string per item."""
        batch = np.array([[image] for image in images], dtype=np.object_)
        result = await self._infer("clip_image", "IMAGE", batch, "BYTES", ("EMBEDDING", "ERROR", "MODEL_ID"), deadline)
        vectors = _checked_vectors("clip_image", result.as_numpy("EMBEDDING"), len(images), CLIP_DIM)
        errors = result.as_numpy("ERROR")
        messages = [""] * len(images) if errors is None else [_to_str(e) for e in errors.reshape(-1)]
        return [item_error_detail(msg) if msg else vectors[i] for i, msg in enumerate(messages)]

    async def _infer_audio(self, samples: np.ndarray, deadline: float) -> Any:
        """One clip per request (whisper has no batch dimension): AUDIO [samples] float32."""
        return await self._infer("whisper", "AUDIO", samples, "FP32", ("LANGUAGE", "SEGMENTS", "MODEL_ID"), deadline)

    async def _infer(
        self, name: ModelName, input_name: str, array: np.ndarray, datatype: str, outputs: Sequence[str],
        deadline: float,
    ) -> Any:
        """One inference request under the call's deadline and retry policy; notes the model id it reports."""
        inputs = [self._input(input_name, array, datatype)]
        requested = [self._grpc.InferRequestedOutput(n) for n in outputs]
        result = await self._call(
            name, deadline,
            lambda timeout: self._client.infer(name, inputs, outputs=requested, client_timeout=timeout),
        )
        self._note_model_id(name, result)
        return result

    async def _probe_identity(self, model: _TritonModel, deadline: float) -> None:
        """Learn ``model_id`` and off/degraded/ready with the cheapest request each model answers (sbert
        names its id in its config): one text, one empty image (not decoded, no forward pass), no audio."""
        if model.name == "sbert":
            return
        if model.name == "clip_text":
            await self._infer_texts("clip_text", ["status"], CLIP_DIM, deadline)
        elif model.name == "clip_image":
            await self._infer_images([b""], deadline)
        elif model.name == "whisper":
            await self._infer_audio(np.zeros(0, np.float32), deadline)

    def _note_model_id(self, name: ModelName, result: Any) -> None:
        model_id = _first_string(result.as_numpy("MODEL_ID")) if name != "sbert" else ""
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
                reason="MODEL_NOT_READY",
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
            model.detail = message.removeprefix(OFF_MARKER).lstrip(": ")

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
                    reason="INFERENCE_CIRCUIT_OPEN",
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
        model_id=parameters.get("model_id", "") or (SBERT_MODEL_ID if name == "sbert" else ""),
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
    if "UNIMPLEMENTED" in status and OFF_MARKER in message:
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
        return model_off(name, message.removeprefix(OFF_MARKER).lstrip(": "))
    if kind == "connection":
        return Unavailable(
            message=f"Triton at {url} is unavailable: {message}",
            reason="INFERENCE_UNAVAILABLE",
            metadata={"url": url, "model": name},
        )
    if kind == "model":
        return Unavailable(
            message=f"{name} is not served by Triton at {url}: {message}",
            reason="MODEL_NOT_READY",
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
    import json

    raw = _first_string(array)
    return [(float(s["start"]), float(s["end"]), str(s["text"])) for s in (json.loads(raw) if raw else [])]


# --------------------------------------------------------------------------------------------------
# Auto: Triton while reachable, in-process torch otherwise


class AutoInference:
    """Triton first; torch while Triton is unreachable; back to Triton when a probe sees it healthy.

    A call on Triton that fails with a connection-level ``Unavailable`` (server unreachable, circuit open)
    is answered by torch instead, and later calls go to torch. A call for a model Triton does not serve
    (``MODEL_NOT_READY``: not loaded, still loading) is answered by torch without switching. While on
    torch, a background probe (at most one every ``probe_interval_s``, started by calls and by
    ``status()``) asks Triton whether it is ready; when it is, the breaker is reset and calls go to Triton
    again. ``switches`` records each switch. Failures other than connection-level ones (bad input, a model
    that is off, a deadline) are the caller's answer and never switch backends.
    """

    def __init__(self, triton: TritonInference, torch: Inference, *, probe_interval_s: float = 2.0) -> None:
        self.triton = triton
        self.torch = torch
        self.probe_interval_s = probe_interval_s
        self._active = "triton"
        self._last_probe = float("-inf")
        self._probe_task: asyncio.Task[None] | None = None
        self.switches: list[tuple[float, str]] = []  # (loop time, backend) of each switch, for operators/tests

    @property
    def backend(self) -> str:
        return self._active

    async def status(self) -> dict[str, ModelStatus]:
        """The statuses of the backend in use now (each names its ``backend``); checks Triton first."""
        if await self.triton.ping(timeout_s=min(1.0, self.triton.timeout_s)):
            if self._active == "torch" or self.triton.breaker.state != "closed":
                self.triton.reset()
            self._switch("triton", "status probe")
            return await self.triton.status()
        self._switch("torch", "status: Triton unreachable")
        return await self.torch.status()

    async def model_status(self, name: ModelName) -> ModelStatus:
        backend: Any = self.triton if self._active == "triton" else self.torch
        return await backend.model_status(name)

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray | Exception]:
        return await self._run(lambda b: b.embed_images(images))

    async def embed_clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        return await self._run(lambda b: b.embed_clip_texts(texts))

    async def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        return await self._run(lambda b: b.embed_sentences(texts))

    async def transcribe(self, audio: np.ndarray, sample_rate: int = WHISPER_SAMPLE_RATE) -> Transcript:
        return await self._run(lambda b: b.transcribe(audio, sample_rate))

    def known_model_id(self, name: ModelName) -> str | None:
        backend: Any = self.triton if self._active == "triton" else self.torch
        return backend.known_model_id(name)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        await asyncio.gather(self.triton.close(), self.torch.close())

    async def _run(self, call: Callable[[Any], Awaitable[T]]) -> T:
        if self._active == "triton":
            try:
                return await call(self.triton)
            except Unavailable as exc:
                if exc.reason == "MODEL_NOT_READY":
                    # Triton is up but does not serve this model (yet): torch answers this call only.
                    log.info("inference: %s; answering this call in-process", exc.message)
                    return await call(self.torch)
                if exc.reason not in CONNECTION_REASONS:
                    raise
                self._switch("torch", exc.message)
        else:
            self._maybe_probe()
        return await call(self.torch)

    def _switch(self, backend: str, why: str) -> None:
        if backend == self._active:
            return
        self._active = backend
        self.switches.append((asyncio.get_running_loop().time(), backend))
        if backend == "torch":
            self._last_probe = asyncio.get_running_loop().time()
            log.warning("inference: Triton at %s unavailable (%s); using in-process torch", self.triton.url, why)
        else:
            log.warning("inference: Triton at %s is back; using it again", self.triton.url)

    def _maybe_probe(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_probe < self.probe_interval_s:
            return
        if self._probe_task is not None and not self._probe_task.done():
            return
        self._last_probe = now
        self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        self._last_probe = asyncio.get_running_loop().time()
        if await self.triton.ping(timeout_s=min(1.0, self.triton.timeout_s)):
            self.triton.reset()
            self._switch("triton", "probe")


# --------------------------------------------------------------------------------------------------
# The older TextEmbedder Protocol, kept for callers that only need sentence vectors


@runtime_checkable
class TextEmbedder(Protocol):
    """Turns texts into unit-norm vectors (``len(texts) x dim`` float32)."""

    model_id: str
    dim: int

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class SentenceEmbedder:
    """``TextEmbedder`` over any ``Inference``'s sbert model (``embed_texts`` = ``embed_sentences``)."""

    dim = SBERT_DIM

    def __init__(self, inference: Inference, *, model_id: str = SBERT_MODEL_ID) -> None:
        self.inference = inference
        self.model_id = model_id

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        vectors = await self.inference.embed_sentences(texts)
        self._refresh_model_id()
        return vectors

    async def ready(self) -> bool:
        """True when sbert is usable on the backend now; picks up its ``model_id``."""
        model_status = getattr(self.inference, "model_status", None)
        status = await model_status("sbert") if model_status else (await self.inference.status())["sbert"]
        if status.model_id:
            self.model_id = status.model_id
        return status.usable

    async def close(self) -> None:
        await self.inference.close()

    def _refresh_model_id(self) -> None:
        known = getattr(self.inference, "known_model_id", None)
        model_id = known("sbert") if known else None
        if model_id:
            self.model_id = model_id


class TritonTextEmbedder(SentenceEmbedder):
    """Kept for existing callers: a ``SentenceEmbedder`` over a :class:`TritonInference` at ``url``."""

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
        if model_name != "sbert" or dim != SBERT_DIM:
            raise ValueError("TritonTextEmbedder serves the sbert model (384-d) only")
        super().__init__(TritonInference(url, timeout_s, max_batch=max_batch), model_id=model_id)
        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s


# --------------------------------------------------------------------------------------------------
# Factory


def make_inference(settings: CommonSettings, **triton_options: Any) -> Inference:
    """The backend named by ``settings.inference_backend``: ``triton``, ``torch`` or ``auto``.

    ``triton_options`` go to :class:`TritonInference` (``failure_threshold``, ``reset_timeout_s``,
    ``retry``, ...); ``probe_interval_s`` goes to :class:`AutoInference`.
    """
    choice = settings.inference_backend.strip().lower()
    probe_interval_s = float(triton_options.pop("probe_interval_s", 2.0))
    if choice not in ("auto", "triton", "torch"):
        raise ValueError(f"CLIPMIND_INFERENCE_BACKEND must be auto, triton or torch, not {choice!r}")
    if choice == "triton":
        return TritonInference(settings.triton_url, settings.inference_timeout_s, **triton_options)
    from services.common.inference_torch import TorchInference

    torch_backend = TorchInference.from_settings(settings)
    if choice == "torch":
        return torch_backend
    triton = TritonInference(settings.triton_url, settings.inference_timeout_s, **triton_options)
    return AutoInference(triton, torch_backend, probe_interval_s=probe_interval_s)
