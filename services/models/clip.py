"""CLIP (open_clip) image and text embeddings: decode, resize, center-crop, normalize, tokenize, embed.

The same class runs inside Triton's python backend (model_repository/clip_image, clip_text) and in-process
(the torch fallback), so both backends give the same vectors. Weights (``CLIPMIND_CLIP_WEIGHTS``):

- an open_clip pretrained tag, used only when its file is already in the local cache (HF hub cache or
  ``~/.cache/clip``); nothing is ever downloaded;
- a local checkpoint (state dict or open_clip training checkpoint), or a directory holding one;
- ``random``: seeded initialisation (tests only), identical in every process for the same seed.

An empty setting means the default tag ``laion2b_s34b_b79k``; when it is not cached the model is
unavailable (:class:`WeightsUnavailable`) and CLIP is switched off.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.inference import contract
from services.models import onnx_text
from services.models.weights import WeightsError, WeightsProblem, WeightsSpec, parse_weights, weights_version

log = logging.getLogger(__name__)

CLIP_SETTING = contract.CLIP_WEIGHTS_SETTING
DEFAULT_ARCH = "ViT-B-32"
DEFAULT_TAG = "laion2b_s34b_b79k"
MAX_IMAGE_PIXELS = 40_000_000
CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "model.pth",
)
BATCH = 32


def cached_tag_file(arch: str, tag: str) -> Path | None:
    """The local file of an open_clip pretrained tag if it is already cached, else None (never downloads).

    Raises ``KeyError`` when ``tag`` is not a pretrained tag of ``arch``.
    """
    import open_clip
    from open_clip.pretrained import HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise KeyError(tag)
    if cfg.get("file"):
        path = Path(cfg["file"])
        return path if path.is_file() else None
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or HF_WEIGHTS_NAME
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, "open_clip_model.safetensors")
        for name in candidates:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = cfg.get("url", "")
    if url:
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return path
    return None


def _checkpoint_in_dir(path: Path) -> Path | None:
    for name in CHECKPOINT_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted([*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.pt"), *path.glob("*.pth")])
    return found[0] if found else None


class ClipModel:
    """An open_clip model with its own validation transform and tokenizer. One caller at a time."""

    def __init__(
        self, model: Any, transform: Any, tokenizer: Any, *, arch: str, spec: WeightsSpec, version: str, device: str
    ) -> None:
        self._model = model
        self._transform = transform
        self._tokenizer = tokenizer
        self.arch = arch
        self.spec = spec
        self.weights_version = version
        self.device = device
        self._lock = threading.Lock()
        self.dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 512
        self._text_onnx = onnx_text.Prepared(lambda: onnx_text.clip_text_runtime(self))

    @property
    def model_id(self) -> str:
        return f"clip/{self.arch}@{self.weights_version}"

    @property
    def degraded(self) -> bool:
        return self.spec.degraded

    @classmethod
    def load(
        cls,
        arch: str = DEFAULT_ARCH,
        weights: str = "",
        seed: int = 0,
        device: str = "cpu",
        *,
        setting: str = CLIP_SETTING,
    ) -> ClipModel:
        """Build the model. Raises :class:`WeightsUnavailable` (default tag not cached) or
        :class:`WeightsError` (explicit weights missing or broken), both naming ``setting``."""
        import open_clip
        import torch

        spec = parse_weights(weights, setting=setting, default=DEFAULT_TAG)
        kwargs: dict[str, Any] = {}
        if spec.kind == "random":
            checkpoint = None
        elif spec.kind == "name":
            try:
                checkpoint = cached_tag_file(arch, spec.value)
            except KeyError:
                tags = [t for a, t in open_clip.list_pretrained() if a == arch]
                raise spec.problem(
                    f"{spec.value!r} is not an open_clip pretrained tag of {arch} (known: {', '.join(tags)})"
                ) from None
            if checkpoint is None:
                raise spec.problem(
                    f"open_clip weights {arch}/{spec.value} are not in the local cache and no model hub is "
                    "reachable; set it to a local checkpoint path (or 'random' for tests)"
                )
            tag_cfg = open_clip.get_pretrained_cfg(arch, spec.value)
            kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
            for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation")):
                if tag_cfg.get(key) is not None:
                    kwargs[arg] = tag_cfg[key]
        elif spec.kind == "path":
            checkpoint = _checkpoint_in_dir(spec.path) if spec.path.is_dir() else spec.path
            if checkpoint is None:
                raise WeightsError(setting, f"no checkpoint file (*.safetensors, *.bin, *.pt) in {spec.path}")
        else:
            raise WeightsError(setting, f"CLIP weights cannot come from {spec.kind} {spec.value!r}")

        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model, _, transform = open_clip.create_model_and_transforms(
                    arch, pretrained=str(checkpoint) if checkpoint else None, device=device, **kwargs
                )
            tokenizer = open_clip.get_tokenizer(arch)
        except WeightsProblem:
            raise
        except Exception as exc:
            raise WeightsError(setting, f"could not build CLIP {arch} from {checkpoint or spec.value}: {exc}") from exc
        model.eval()
        version = weights_version(spec, seed)
        log.info("CLIP %s loaded from %s (%s)", arch, checkpoint or "random init", version)
        return cls(model, transform, tokenizer, arch=arch, spec=spec, version=version, device=device)

    def preprocess(self, images: Sequence[bytes]) -> tuple[Any, list[int], dict[int, str]]:
        """Decode and transform images: (``n_ok × 3 × H × W`` tensor, indices of the decoded images,
        ``{index: error}`` for the undecodable ones)."""
        import torch
        from PIL import Image

        tensors = []
        ok: list[int] = []
        errors: dict[int, str] = {}
        for i, data in enumerate(images):
            try:
                if not data:
                    raise ValueError("no bytes")
                with Image.open(io.BytesIO(bytes(data))) as image:
                    # Refuse decompression bombs before decoding: a small file may claim a huge canvas.
                    if image.width * image.height > MAX_IMAGE_PIXELS:
                        raise ValueError(f"image is {image.width}x{image.height}, over {MAX_IMAGE_PIXELS} pixels")
                    image.draft("RGB", (448, 448))  # JPEG: decode at reduced size, CLIP needs 224
                    image.load()
                    rgb = image.convert("RGB")
                tensors.append(self._transform(rgb))
                ok.append(i)
            except Exception as exc:  # PIL raises many kinds for bad bytes
                reason = str(exc).split(" <_io.")[0]  # PIL appends the buffer's repr
                errors[i] = contract.item_error(
                    contract.MODEL_ITEM, i, f"is not a decodable image: {type(exc).__name__}: {reason}"
                )
        size = getattr(self._model.visual, "image_size", (224, 224))
        if isinstance(size, int):
            size = (size, size)
        batch = torch.stack(tensors) if tensors else torch.zeros((0, 3, *size))
        return batch, ok, errors

    def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray | str]:
        """One result per image, in order: a unit-norm float32 vector, or an error string for that image."""
        import torch

        batch, ok, errors = self.preprocess(images)
        results: list[np.ndarray | str] = [errors.get(i, "") for i in range(len(images))]
        with self._lock, torch.inference_mode():
            for start in range(0, len(ok), BATCH):
                chunk = batch[start : start + BATCH].to(self.device)
                vectors = _unit(self._model.encode_image(chunk).float().cpu().numpy())
                for j, vector in enumerate(vectors):
                    results[ok[start + j]] = vector
        return results

    @property
    def text_runtime(self) -> str:
        """What encodes texts: ``onnx-int8`` / ``onnx-fp32`` (services.models.onnx_text) or ``torch``; the first
        call prepares it (exports the graph when it is not cached yet)."""
        return self._text_onnx.name

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``len(texts) × dim`` unit-norm float32; an empty or whitespace text is a ValueError naming it.
        On CPU through ONNX Runtime when its graph passed the parity check (``text_runtime``), else torch."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"texts[{i}] is empty or whitespace")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        encode = self._text_onnx.encoder
        if encode is None:
            return self.embed_texts_torch(texts)
        out = []
        for start in range(0, len(texts), BATCH):
            tokens = self._tokenizer(list(texts[start : start + BATCH]))
            tokens = tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]  # up to the last end-of-text token
            out.append(_unit(encode({"tokens": np.ascontiguousarray(tokens.numpy(), dtype=np.int64)})))
        return np.concatenate(out)

    def embed_texts_torch(self, texts: Sequence[str]) -> np.ndarray:
        """``embed_texts`` in torch (the reference the ONNX graphs are checked against)."""
        import torch

        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                tokens = self._tokenizer(list(texts[start : start + BATCH])).to(self.device)
                out.append(_unit(self._encode_text(tokens).float().cpu().numpy()))
        return np.concatenate(out)

    def _encode_text(self, tokens: Any) -> Any:
        """``encode_text`` without the padding after the longest text of the batch.

        The tokenizer pads every text to the full context (77 tokens) while a search query holds a dozen.
        CLIP's text transformer is causal and pools at the end-of-text token, so no position at or before
        that token attends to the padding: cutting the columns after the last end-of-text token of the
        batch gives the same vectors (to float rounding) for a fraction of the work (5x at batch 8 on CPU).
        Models that pool otherwise, or attend both ways, take the full path.
        """
        model = self._model
        mask = getattr(model, "attn_mask", None)
        if (
            getattr(model, "text_pool_type", None) != "argmax"
            or mask is None
            or not hasattr(model, "positional_embedding")
            or getattr(model, "text_projection", None) is None
        ):
            return model.encode_text(tokens)
        from open_clip.transformer import text_global_pool

        length = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the highest id
        tokens = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.transformer(x, attn_mask=mask[:length, :length])
        x = text_global_pool(model.ln_final(x), tokens, "argmax")
        projection = model.text_projection
        return projection(x) if callable(projection) else x @ projection


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
