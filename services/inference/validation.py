"""What every inference backend checks and answers alike, before and after a model runs: empty texts, bad
audio, per-image errors (``images[i]``), a model that is off, a transcript from the model's raw segments.

So Triton and in-process torch answer bad input with the same ``InvalidArgument`` and field violations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.inference.contract import WEIGHTS_SETTING
from services.inference.ports import WHISPER_SAMPLE_RATE, Transcript, TranscriptSegment


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


def model_off(name: str, detail: str) -> FailedPrecondition:
    """A model whose weights cannot be had: ``FailedPrecondition`` naming the setting that would enable it."""
    setting = WEIGHTS_SETTING[name]
    return FailedPrecondition(
        message=f"{name} is off: {detail}. Set {setting} to enable it.",
        reason="MODEL_OFF",
        metadata={"model": name, "setting": setting},
    )


def transcript_from(language: str, segments: Sequence[Any]) -> Transcript:
    """A ``Transcript`` from the model's ``(start_s, end_s, text)`` segments."""
    return Transcript(
        language=str(language),
        segments=[TranscriptSegment(float(s[0]), float(s[1]), str(s[2]).strip()) for s in segments],
    )
