"""The one inference interface of the mesh, shared by its two backends (Triton, in-process torch).

Callers (pipeline stages, search) depend on :class:`Inference` only. Four models:

- ``clip_image``: image bytes (JPEG/PNG/…) → 512-d L2-normalized vectors; decode, resize, center-crop
  and normalize happen inside the model (server side for Triton).
- ``clip_text``: text → 512-d L2-normalized vectors (CLIP tokenizer inside the model).
- ``sbert``: sentence → 384-d L2-normalized vectors.
- ``whisper``: 16 kHz mono float32 audio → timed segments and the detected language.

A model whose weights cannot be had is ``off`` (its modality is switched off, never faked); one with
random weights (tests only) is ``degraded``. Every vector is stored with its ``model_id``, which names
the architecture and the weights version, so a changed model is detected instead of mixed.

Implementations: services.inference.triton (``TritonInference``), services.inference.torch_local
(``TorchInference``), services.inference.auto (``AutoInference``); services.inference.factory picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from services.inference import contract

ModelName = Literal["clip_image", "clip_text", "sbert", "whisper"]  # the contract's model names
MODEL_NAMES: tuple[ModelName, ...] = (contract.CLIP_IMAGE, contract.CLIP_TEXT, contract.SBERT, contract.WHISPER)
ModelState = Literal["ready", "degraded", "off", "unavailable"]

CLIP_DIM = 512
SBERT_DIM = 384
WHISPER_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class ModelStatus:
    """What one model is doing in this deployment."""

    name: ModelName
    state: ModelState
    model_id: str = ""  # e.g. "clip/ViT-B-32@laion2b_s34b_b79k"; "" when off
    backend: str = ""  # "triton" or "torch"
    detail: str = ""  # why off/degraded/unavailable, in words
    setting: str = ""  # the setting that provides the weights, e.g. "CLIPMIND_CLIP_WEIGHTS"

    @property
    def usable(self) -> bool:
        return self.state in ("ready", "degraded")


@dataclass(frozen=True)
class TranscriptSegment:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    language: str
    segments: list[TranscriptSegment] = field(default_factory=list)


class Inference(Protocol):
    """Implemented by the Triton backend, the in-process torch backend, and ``auto`` over both."""

    @property
    def backend(self) -> str:
        """The backend in use now: "triton" or "torch"."""
        ...

    async def status(self) -> dict[str, ModelStatus]: ...

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray | Exception]:
        """One result per image, in order: a 512-d vector, or an ``InvalidArgument`` for that image alone
        (undecodable bytes) while the rest are answered. Raises ``FailedPrecondition`` when CLIP is off,
        ``Unavailable``/``DeadlineExceeded`` when the backend cannot answer."""
        ...

    async def embed_clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        """n × 512 float32; empty text is ``InvalidArgument`` naming ``texts[i]``."""
        ...

    async def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """n × 384 float32; empty text is ``InvalidArgument`` naming ``texts[i]``."""
        ...

    async def transcribe(self, audio: np.ndarray, sample_rate: int = WHISPER_SAMPLE_RATE) -> Transcript:
        """Speech recognition on mono float32 audio; a rate other than 16 kHz is ``InvalidArgument``."""
        ...

    async def close(self) -> None: ...
