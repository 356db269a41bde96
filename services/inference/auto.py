"""``AutoInference``: Triton while it is reachable, in-process torch while it is not, and back to Triton once
a background probe sees it healthy again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from services.common.errors import Unavailable
from services.inference.ports import WHISPER_SAMPLE_RATE, Inference, ModelName, ModelStatus, Transcript
from services.inference.triton import CONNECTION_REASONS, MODEL_NOT_READY, TritonInference

log = logging.getLogger(__name__)

T = TypeVar("T")


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
                if exc.reason == MODEL_NOT_READY:
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
