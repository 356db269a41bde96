"""The model classes of services.models with real torch (seeded random CLIP/Whisper weights), and the same
models served by a real tritonserver agreeing with them (raw tritonclient calls)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.models.clip import ClipModel
from services.models.whisper import WhisperModel

SR = 16_000


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """Four visibly different images: red square, checkerboard, gradient, noise (PNG and JPEG)."""
    checker = (np.indices((224, 224)).sum(axis=0) // 28 % 2 * 255).astype(np.uint8)
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (180, 1))
    noise = np.random.default_rng(0).integers(0, 256, (240, 240, 3), dtype=np.uint8)
    return [
        _png(Image.new("RGB", (200, 150), (255, 0, 0))),
        _png(Image.fromarray(checker).convert("RGB")),
        _jpeg(Image.fromarray(gradient).convert("L")),  # grayscale JPEG: converted to RGB by the model
        _png(Image.fromarray(noise)),
    ]


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return ClipModel.load(weights="random", seed=0)


@pytest.fixture(scope="module")
def whisper_model() -> WhisperModel:
    return WhisperModel.load(weights="random", seed=0)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 6 s of espeak-ng speech at 16 kHz mono float32 (a tone when espeak-ng is missing)."""
    if not (shutil.which("espeak-ng") and shutil.which("ffmpeg")):
        t = np.arange(6 * SR) / SR
        return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    folder = tmp_path_factory.mktemp("speech")
    wav = folder / "speech.wav"
    text = "Video search finds the moment you remember. The quick brown fox jumps over the lazy dog."
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    raw = folder / "speech.f32"
    subprocess.run(
        ["ffmpeg", "-y", "-loglevel", "error", "-i", str(wav), "-ar", str(SR), "-ac", "1", "-f", "f32le", str(raw)],
        check=True,
    )
    return np.fromfile(raw, dtype=np.float32)


def _cosines(vectors: np.ndarray) -> np.ndarray:
    return vectors @ vectors.T


# --- CLIP in-process ----------------------------------------------------------------------------------


def test_clip_identity_and_shape(clip: ClipModel) -> None:
    assert clip.model_id == "clip/ViT-B-32@random-seed0"
    assert clip.degraded and clip.dim == 512


def test_clip_random_seed_builds_identical_models(clip: ClipModel, images: list[bytes]) -> None:
    again = ClipModel.load(weights="random", seed=0)
    first = np.stack(clip.embed_images(images))  # type: ignore[arg-type]
    second = np.stack(again.embed_images(images))  # type: ignore[arg-type]
    np.testing.assert_allclose(first, second, atol=1e-6)
    np.testing.assert_allclose(clip.embed_texts(["a red square"]), again.embed_texts(["a red square"]), atol=1e-6)


def test_clip_distinct_images_give_distinct_unit_vectors(clip: ClipModel, images: list[bytes]) -> None:
    results = clip.embed_images(images)
    assert all(isinstance(r, np.ndarray) for r in results)
    vectors = np.stack(results)  # type: ignore[arg-type]
    assert vectors.shape == (4, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = _cosines(vectors)
    off_diagonal = cosines[~np.eye(4, dtype=bool)]
    assert off_diagonal.max() < 0.99, cosines


def test_clip_undecodable_image_fails_alone(clip: ClipModel, images: list[bytes]) -> None:
    batch = [images[0], b"definitely not an image", b"", images[1]]
    results = clip.embed_images(batch)
    assert isinstance(results[1], str) and "images[1]" in results[1]
    assert isinstance(results[2], str) and "images[2]" in results[2]
    good = clip.embed_images([images[0], images[1]])
    np.testing.assert_allclose(results[0], good[0], atol=1e-5)
    np.testing.assert_allclose(results[3], good[1], atol=1e-5)
    tensor, ok, errors = clip.preprocess(batch)
    assert tuple(tensor.shape) == (2, 3, 224, 224) and ok == [0, 3] and set(errors) == {1, 2}


def test_clip_texts_unit_norm_and_distinct(clip: ClipModel) -> None:
    vectors = clip.embed_texts(["a dog on a beach", "a spreadsheet of revenue", "ünïcödé ✓"])
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _cosines(vectors)[~np.eye(3, dtype=bool)].max() < 0.99
    assert clip.embed_texts([]).shape == (0, 512)


def test_clip_text_trimmed_padding_matches_the_full_context(clip: ClipModel) -> None:
    """The torch path cuts the padding after the batch's longest text; open_clip's full 77-token pass agrees,
    and a text's vector does not depend on the other texts of its batch (ONNX Runtime's graph of the same cut
    tower: tests/integration/test_onnx_text.py)."""
    import torch

    texts = ["dog", "a dog jumping into the pool at a summer party", "revenue " * 100]  # the last fills 77
    vectors = clip.embed_texts_torch(texts)
    with torch.inference_mode():
        full = clip._model.encode_text(clip._tokenizer(texts)).float().numpy()
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    np.testing.assert_allclose((vectors * full).sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, full, atol=1e-5)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(clip.embed_texts_torch([text])[0], vectors[i], atol=1e-5)


def test_clip_empty_text_is_a_value_error_naming_it(clip: ClipModel) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        clip.embed_texts(["fine", "  "])


# --- Whisper in-process -------------------------------------------------------------------------------


def _assert_sane(segments: list[tuple[float, float, str]], duration: float) -> None:
    previous_end = 0.0
    for start, end, text in segments:
        assert 0.0 <= start <= end <= duration + 1e-6, segments
        assert start >= previous_end - 1e-6, segments
        assert text.strip()
        previous_end = end


def test_whisper_random_transcribes_within_duration(whisper_model: WhisperModel, speech: np.ndarray) -> None:
    assert whisper_model.model_id == "whisper/tiny@random-seed0" and whisper_model.degraded
    language, segments = whisper_model.transcribe(speech)
    assert isinstance(language, str) and language
    _assert_sane(segments, len(speech) / SR)


def test_whisper_long_audio_terminates_and_stays_monotonic(whisper_model: WhisperModel, speech: np.ndarray) -> None:
    audio = np.concatenate([speech, np.zeros(SR * 28, np.float32), speech])  # crosses a 30 s window
    _, segments = whisper_model.transcribe(audio)
    _assert_sane(segments, len(audio) / SR)


@pytest.mark.parametrize(
    ("audio", "rate", "match"),
    [
        (np.zeros(SR, np.float32), 44_100, "16000"),
        (np.zeros((2, SR), np.float32), SR, "1-D"),
        (np.zeros(0, np.float32), SR, "empty"),
        (np.zeros(SR, np.int16), SR, "float"),
        (np.full(SR, np.nan, np.float32), SR, "NaN"),
    ],
)
def test_whisper_rejects_bad_audio(whisper_model: WhisperModel, audio: np.ndarray, rate: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        whisper_model.transcribe(audio, rate)


# --- Triton agrees with the in-process classes --------------------------------------------------------


@pytest.fixture
async def triton(triton_url: str):
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(triton_url)
    yield client
    await client.close()


def _bytes_input(name: str, items: list[bytes]):
    import tritonclient.grpc.aio as grpcclient

    batch = np.array([[item] for item in items], dtype=np.object_)
    tensor = grpcclient.InferInput(name, list(batch.shape), "BYTES")
    tensor.set_data_from_numpy(batch)
    return tensor


def _assert_agree(served: np.ndarray, local: np.ndarray) -> None:
    assert served.shape == local.shape
    cosines = np.sum(served * local, axis=1)
    assert cosines.min() >= 0.999, cosines


@pytest.mark.integration
async def test_triton_clip_image_agrees_with_in_process(triton, clip: ClipModel, images: list[bytes]) -> None:
    batch = [images[0], b"not an image", images[2], images[3]]
    result = await triton.infer("clip_image", [_bytes_input("IMAGE", batch)], client_timeout=60)
    vectors, errors = result.as_numpy("EMBEDDING"), result.as_numpy("ERROR").reshape(-1)
    assert result.as_numpy("MODEL_ID").reshape(-1).tolist() == [clip.model_id.encode()] * 4
    assert errors[0] == errors[2] == errors[3] == b"" and b"IMAGE[1]" in errors[1]
    assert not vectors[1].any()
    local = np.stack([v for v in clip.embed_images(batch) if not isinstance(v, str)])
    _assert_agree(vectors[[0, 2, 3]], local)


@pytest.mark.integration
async def test_triton_clip_image_requests_of_one_dynamic_batch_answer_separately(triton, images: list[bytes]) -> None:
    results = await asyncio.gather(
        *(triton.infer("clip_image", [_bytes_input("IMAGE", [img])], client_timeout=60) for img in [*images, b"x"])
    )
    errors = [r.as_numpy("ERROR").reshape(-1)[0] for r in results]
    assert errors[:4] == [b""] * 4 and errors[4].startswith(b"IMAGE[0]")


@pytest.mark.integration
async def test_triton_clip_text_agrees_with_in_process(triton, clip: ClipModel) -> None:
    texts = ["a red square", "a checkerboard", "noise on a screen"]
    result = await triton.infer("clip_text", [_bytes_input("TEXT", [t.encode() for t in texts])], client_timeout=60)
    _assert_agree(result.as_numpy("EMBEDDING"), clip.embed_texts(texts))
    assert result.as_numpy("MODEL_ID")[0, 0] == clip.model_id.encode()


@pytest.mark.integration
async def test_triton_clip_text_empty_text_fails_its_request(triton) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        await triton.infer("clip_text", [_bytes_input("TEXT", [b"ok", b" "])], client_timeout=60)
    assert "INVALID_ARGUMENT" in str(info.value.status()) and "TEXT[1]" in info.value.message()


@pytest.mark.integration
async def test_triton_whisper_agrees_with_in_process(triton, whisper_model: WhisperModel, speech: np.ndarray) -> None:
    import tritonclient.grpc.aio as grpcclient

    audio = grpcclient.InferInput("AUDIO", [len(speech)], "FP32")
    audio.set_data_from_numpy(speech)
    result = await triton.infer("whisper", [audio], client_timeout=120)
    segments = json.loads(result.as_numpy("SEGMENTS")[0])
    language = result.as_numpy("LANGUAGE")[0].decode()
    assert result.as_numpy("MODEL_ID")[0] == whisper_model.model_id.encode()
    # Random weights make language detection a near-tie, so the detected language (and with it the
    # decoded tokens) can flip between processes on last-bit differences: compare the contract, not the
    # words. Numeric Triton/torch agreement is asserted on CLIP and SBERT vectors (cosine >= 0.999).
    local_language, local_segments = whisper_model.transcribe(speech)
    import whisper.tokenizer

    assert language in whisper.tokenizer.LANGUAGES and local_language in whisper.tokenizer.LANGUAGES
    served = [(s["start"], s["end"], s["text"]) for s in segments]
    _assert_sane(served, len(speech) / SR)
    _assert_sane(local_segments, len(speech) / SR)


@pytest.mark.integration
async def test_triton_whisper_empty_audio_is_a_status_probe(triton) -> None:
    import tritonclient.grpc.aio as grpcclient

    audio = grpcclient.InferInput("AUDIO", [0], "FP32")
    audio.set_data_from_numpy(np.zeros(0, np.float32))
    result = await triton.infer("whisper", [audio], client_timeout=30)
    assert json.loads(result.as_numpy("SEGMENTS")[0]) == []
    assert result.as_numpy("MODEL_ID")[0] == b"whisper/tiny@random-seed0"


def test_repository_declares_the_contracts() -> None:
    root = Path(__file__).resolve().parents[2] / "model_repository"
    image = (root / "clip_image" / "config.pbtxt").read_text()
    assert 'name: "ERROR"' in image and "max_batch_size: 32" in image and "KIND_CPU" in image
    assert 'name: "AUDIO"' in (root / "whisper" / "config.pbtxt").read_text()
