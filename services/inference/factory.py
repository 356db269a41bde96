"""Settings wiring of the inference backends: ``make_inference`` gives the backend that
``settings.inference_backend`` names (composition roots call it): ``triton``, ``torch`` (in-process) or ``auto``
(Triton, torch while Triton is unreachable)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.inference.auto import AutoInference
from services.inference.ports import Inference
from services.inference.torch_local import TorchInference
from services.inference.triton import TritonInference

if TYPE_CHECKING:
    from services.common.config import CommonSettings

BACKENDS = ("auto", "triton", "torch")


def make_inference(settings: CommonSettings, **triton_options: Any) -> Inference:
    """The backend named by ``settings.inference_backend``: ``triton``, ``torch`` or ``auto``.

    ``triton_options`` go to :class:`TritonInference` (``failure_threshold``, ``reset_timeout_s``,
    ``retry``, ...); ``probe_interval_s`` goes to :class:`AutoInference`.
    """
    choice = settings.inference_backend.strip().lower()
    probe_interval_s = float(triton_options.pop("probe_interval_s", 2.0))
    if choice not in BACKENDS:
        raise ValueError(f"CLIPMIND_INFERENCE_BACKEND must be auto, triton or torch, not {choice!r}")
    if choice == "triton":
        return triton_inference(settings, **triton_options)
    torch_backend = torch_inference(settings)
    if choice == "torch":
        return torch_backend
    return AutoInference(triton_inference(settings, **triton_options), torch_backend,
                         probe_interval_s=probe_interval_s)


def triton_inference(settings: CommonSettings, **options: Any) -> TritonInference:
    """The Triton client at ``settings.triton_url`` with the call deadline of the settings."""
    return TritonInference(settings.triton_url, settings.inference_timeout_s, **options)


def torch_inference(settings: CommonSettings, **overrides: Any) -> TorchInference:
    """The in-process backend with the weights of the settings; ``overrides`` win (e.g. ``device``)."""
    options: dict[str, Any] = {
        "clip_arch": settings.clip_arch,
        "clip_weights": settings.clip_weights,
        "sbert_weights": settings.sbert_weights,
        "whisper_weights": settings.whisper_weights,
        "seed": settings.model_seed,
        "timeout_s": settings.inference_timeout_s,
    }
    options.update(overrides)
    return TorchInference(**options)
