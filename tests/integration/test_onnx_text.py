"""Text encoders on ONNX Runtime (services.models.onnx_text) against torch: the graphs are exported from the
loaded models, checked for parity, cached, and refused when they disagree (real torch, real ONNX Runtime; CLIP
with seeded random weights, the real all-MiniLM-L6-v2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.models import onnx_text
from services.models.clip import ClipModel
from services.models.sbert import SbertModel

pytestmark = pytest.mark.integration

TEXTS = [
    "a dog jumping into the pool",
    "where she talks about quarterly revenue",
    "red",
    "The committee met on Tuesday to discuss the budget, the new hires and the plans for the spring release.",
    "ünïcödé ✓ 🎬",
    "a much longer text that goes on and on " * 12,  # over CLIP's 77 tokens: truncated the same way
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(onnx_text.CACHE_SETTING, str(tmp_path / "onnx"))
    monkeypatch.delenv(onnx_text.RUNTIME_SETTING, raising=False)
    return tmp_path / "onnx"


def test_clip_text_runs_int8_in_onnx_runtime_close_to_torch(cache: Path) -> None:
    clip = ClipModel.load(weights="random", seed=0)
    assert clip.text_runtime == "onnx-int8"
    fast, reference = clip.embed_texts(TEXTS), clip.embed_texts_torch(TEXTS)
    assert fast.shape == (len(TEXTS), 512) and fast.dtype == np.float32
    assert np.allclose(np.linalg.norm(fast, axis=1), 1, atol=1e-5)
    assert _cosines(fast, reference).min() >= onnx_text.MIN_COSINE_INT8
    # one at a time (the query path) as close to torch as in a padded batch (int8 activations are scaled per
    # batch, so a text's vector moves a little with its batch)
    singles = np.concatenate([clip.embed_texts([t]) for t in TEXTS])
    assert _cosines(singles, reference).min() >= onnx_text.MIN_COSINE_INT8
    # each text's vector is nearest to torch's vector of the same text, not another's
    assert ((fast @ reference.T).argmax(axis=1) == np.arange(len(TEXTS))).all()
    assert [p.name for p in cache.glob("*.onnx")] == [onnx_text._graph_path(clip.model_id, "int8").name]


def test_sbert_runs_float32_in_onnx_runtime_like_torch(cache: Path) -> None:
    sbert = SbertModel.load()
    assert sbert.runtime == "onnx-fp32"
    texts = [f"segment {i}: " + "word " * (i % 40) for i in range(70)] + TEXTS  # two batches, mixed lengths
    fast, reference = sbert.embed_texts(texts), sbert.embed_texts_torch(texts)
    assert fast.shape == (len(texts), 384)
    assert _cosines(fast, reference).min() >= onnx_text.MIN_COSINE  # and each vector in its own place


def test_a_cached_graph_is_reused_and_one_that_disagrees_is_refused(cache: Path) -> None:
    clip = ClipModel.load(weights="random", seed=0)
    assert clip.text_runtime == "onnx-int8"
    graph = onnx_text._graph_path(clip.model_id, "int8")
    exported = graph.stat().st_mtime_ns
    again = ClipModel.load(weights="random", seed=0)
    assert again.text_runtime == "onnx-int8" and graph.stat().st_mtime_ns == exported  # not exported again

    # Another model's graph under this model's name (weights changed under a stale cache): the check refuses it,
    # the float32 graph is built and used instead, and the vectors are still this model's.
    other = ClipModel.load(weights="random", seed=1)
    assert other.text_runtime == "onnx-int8"
    graph.write_bytes(onnx_text._graph_path(other.model_id, "int8").read_bytes())
    stale = ClipModel.load(weights="random", seed=0)
    assert stale.text_runtime == "onnx-fp32"
    assert _cosines(stale.embed_texts(TEXTS), stale.embed_texts_torch(TEXTS)).min() >= onnx_text.MIN_COSINE


def test_torch_stays_when_asked_or_when_onnx_runtime_cannot_serve(cache: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(onnx_text.RUNTIME_SETTING, "torch")
    clip = ClipModel.load(weights="random", seed=0)
    assert clip.text_runtime == "torch"
    assert not list(cache.glob("*.onnx")) if cache.exists() else True

    monkeypatch.delenv(onnx_text.RUNTIME_SETTING)
    cache.parent.joinpath("not-a-dir").write_text("")
    monkeypatch.setenv(onnx_text.CACHE_SETTING, str(cache.parent / "not-a-dir" / "onnx"))  # cannot be created
    sbert = SbertModel.load()
    assert sbert.runtime == "torch"
    assert _cosines(sbert.embed_texts(TEXTS), sbert.embed_texts_torch(TEXTS)).min() > 0.99999
