"""Where a model's weights come from: one setting string parsed into a :class:`WeightsSpec`.

A weights setting (``CLIPMIND_CLIP_WEIGHTS``, ``CLIPMIND_WHISPER_WEIGHTS``, ``CLIPMIND_SBERT_WEIGHTS``) holds
one of:

- ``""`` (empty): the model's default source; ``spec.explicit`` is False;
- ``random``: seeded random weights (tests only; the model reports itself degraded);
- ``package:<pkg>``: a pip-installed package holding the weights (Sentence-BERT);
- a local path (file or directory, must exist): anything containing a path separator, starting with
  ``~`` or ``.``, or ending with a checkpoint suffix;
- otherwise a hub tag or name (open_clip pretrained tag, Whisper model name, ``hf-hub:org/name``).

Two failures, handled differently by callers:

- :class:`WeightsUnavailable`: the *default* weights cannot be had (nothing cached, package missing): the
  modality is switched off, the rest of the mesh runs;
- :class:`WeightsError`: weights that were asked for explicitly are missing or broken: a startup error
  naming the setting to fix.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

WeightsKind = Literal["random", "path", "name", "package"]

RANDOM = "random"
PACKAGE_PREFIX = "package:"
HF_HUB_PREFIX = "hf-hub:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class WeightsProblem(Exception):
    """Base of the two weights failures; ``setting`` names the configuration key to fix."""

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting}: {detail}")
        self.setting = setting
        self.detail = detail


class WeightsUnavailable(WeightsProblem):
    """The default weights cannot be had here; the caller switches the modality off."""


class WeightsError(WeightsProblem):
    """Explicitly configured weights are missing or fail to load; a startup error."""


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed weights setting."""

    setting: str  # e.g. "CLIPMIND_CLIP_WEIGHTS"
    kind: WeightsKind
    value: str  # tag/name, package name, or the path as given (expanded); "random" for random
    explicit: bool  # False when the setting was empty and the default applies

    @property
    def path(self) -> Path:
        if self.kind != "path":
            raise ValueError(f"{self.setting} does not name a path")
        return Path(self.value)

    @property
    def degraded(self) -> bool:
        return self.kind == "random"

    def problem(self, detail: str) -> WeightsProblem:
        """The right failure for this spec: unavailable for a default, an error for an explicit setting."""
        return WeightsError(self.setting, detail) if self.explicit else WeightsUnavailable(self.setting, detail)


def looks_like_path(value: str) -> bool:
    if value.startswith(HF_HUB_PREFIX):
        return False
    return (
        "/" in value or os.sep in value or value.startswith(("~", ".")) or value.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def parse_weights(value: str | None, *, setting: str, default: str) -> WeightsSpec:
    """Parse a weights setting; an empty one means ``default`` (not explicit).

    A path must exist: if it does not, :class:`WeightsError` (explicit) or :class:`WeightsUnavailable`
    (default) naming ``setting`` is raised.
    """
    raw = (value or "").strip()
    explicit = bool(raw)
    text = raw or default.strip()
    if not text:
        raise WeightsUnavailable(setting, "no weights configured and the model has no default")
    if text.lower() == RANDOM:
        return WeightsSpec(setting, "random", RANDOM, explicit)
    if text.startswith(PACKAGE_PREFIX):
        package = text.removeprefix(PACKAGE_PREFIX).strip()
        if not package:
            raise WeightsError(setting, f"{text!r} names no package")
        return WeightsSpec(setting, "package", package, explicit)
    if looks_like_path(text):
        path = Path(text).expanduser()
        spec = WeightsSpec(setting, "path", str(path), explicit)
        if not path.exists():
            raise spec.problem(f"weights path {path} does not exist")
        return spec
    return WeightsSpec(setting, "name", text, explicit)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_sha256(path: Path) -> str:
    """Digest over the relative names and contents of every file under ``path`` (sorted)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(b"\0")
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def weights_version(spec: WeightsSpec, seed: int = 0, package_version: str = "") -> str:
    """The weights part of a model id: ``<tag>``, ``file-<sha12>``, ``dir-<sha12>``, ``random-seed<N>``,
    or ``<package>-<version>``."""
    if spec.kind == "random":
        return f"random-seed{seed}"
    if spec.kind == "name":
        return spec.value
    if spec.kind == "package":
        return f"{spec.value}-{package_version}" if package_version else spec.value
    path = spec.path
    if path.is_dir():
        return f"dir-{dir_sha256(path)[:12]}"
    return f"file-{file_sha256(path)[:12]}"
