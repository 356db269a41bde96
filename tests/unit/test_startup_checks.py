"""Weights settings at startup: explicit-but-missing weights stop the process naming the setting;
missing default weights do not (that model is simply off)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import CommonSettings
from services.common.model_health import check_weight_settings, describe
from services.inference.ports import ModelStatus


def test_explicit_missing_checkpoint_is_a_startup_error(tmp_path: Path) -> None:
    settings = CommonSettings(clip_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(SystemExit) as err:
        check_weight_settings(settings)
    assert "CLIPMIND_CLIP_WEIGHTS" in str(err.value) and "missing.pt" in str(err.value)
    with pytest.raises(SystemExit, match="CLIPMIND_WHISPER_WEIGHTS"):
        check_weight_settings(CommonSettings(whisper_weights=str(tmp_path / "tiny.pt")))


def test_defaults_and_random_pass(tmp_path: Path) -> None:
    check_weight_settings(CommonSettings())
    check_weight_settings(CommonSettings(clip_weights="random", whisper_weights="random"))


def test_status_line_names_the_setting_of_an_off_model() -> None:
    off = ModelStatus("clip_image", "off", detail="laion2b_s34b_b79k is not in the local cache",
                      setting="CLIPMIND_CLIP_WEIGHTS")
    line = describe(off)
    assert line.startswith("clip_image: off") and "set CLIPMIND_CLIP_WEIGHTS" in line
    assert "set" not in describe(ModelStatus("sbert", "ready", "sbert/all-MiniLM-L6-v2", "triton"))
