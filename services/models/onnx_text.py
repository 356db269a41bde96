"""Text encoders on ONNX Runtime for CPU: CLIP's text tower (int8) and Sentence-BERT (float32).

A search embeds its query with both text encoders, one short text each, and on CPU torch spends most of that
time on per-operator overhead and on reading float32 weights: 43 ms for CLIP ViT-B/32's text tower (already cut
to the query's tokens) and 22 ms for all-MiniLM-L6-v2 on this 2-core machine. The same graphs exported to ONNX
run in ONNX Runtime in 15 ms and 5.8 ms; CLIP's with its linear layers quantized to int8 (dynamic quantization)
in 10 ms. Sentence-BERT stays float32: int8 moved its vectors too far (cosine 0.94-0.97 against torch).

How a model gets its graph (:func:`clip_text_runtime`, :func:`sbert_runtime`): the graph is exported from the
loaded torch model (the weights the service serves, whatever they are) into the cache directory
(``CLIPMIND_ONNX_CACHE``, default ``~/.cache/clipmind/onnx``) under a name made of the model id, the torch and
ONNX Runtime versions and :data:`FORMAT`, so a restart reuses it (export + quantization take ~10 s once).
Every time a graph is loaded it is checked against torch on :data:`PROBE_TEXTS` (single texts and a padded
batch): every vector's cosine must reach :data:`MIN_COSINE_INT8` (quantized) or :data:`MIN_COSINE` (float32). A
quantized CLIP graph that misses it is replaced by the float32 one; when ONNX Runtime is missing, the export
fails or no graph passes, the model keeps torch (and says why in the log). ``CLIPMIND_TEXT_RUNTIME=torch``
keeps torch without trying.

Tokenization stays in the model classes (open_clip's tokenizer, the sentence-transformers tokenizer), so the
graphs take word pieces and give unit-norm vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RUNTIME_SETTING = "CLIPMIND_TEXT_RUNTIME"
CACHE_SETTING = "CLIPMIND_ONNX_CACHE"
FORMAT = 1  # bump when what is exported changes: older cached graphs are then ignored
OPSET = 17
MIN_COSINE = 0.9999
MIN_COSINE_INT8 = 0.995
PROBE_TEXTS = (
    "a dog jumping into the pool",
    "where she talks about quarterly revenue",
    "Quarterly revenue grew five percent, the CFO said, and the board approved the new budget for next year.",
    "red",
    "ünïcödé text ✓ with emoji 🎬",
)

Encoder = Callable[[dict[str, np.ndarray]], np.ndarray]


class Prepared:
    """A model's ONNX encoder, built on first use (export, or load and check): ``encoder`` is None when torch
    encodes; ``name`` says which (``onnx-int8``, ``onnx-fp32``, ``torch``). Safe to ask from several threads."""

    def __init__(self, build: Callable[[], tuple[Encoder, str] | None]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._done = False
        self._encoder: Encoder | None = None
        self._variant = ""

    def _prepare(self) -> None:
        with self._lock:
            if not self._done:
                built = self._build()
                if built is not None:
                    self._encoder, self._variant = built
                self._done = True

    @property
    def encoder(self) -> Encoder | None:
        if not self._done:
            self._prepare()
        return self._encoder

    @property
    def name(self) -> str:
        return f"onnx-{self._variant}" if self.encoder is not None else "torch"


def enabled(device: str) -> bool:
    """ONNX Runtime is used on CPU unless ``CLIPMIND_TEXT_RUNTIME=torch``; on a GPU torch stays."""
    return device == "cpu" and os.environ.get(RUNTIME_SETTING, "onnx").strip().lower() != "torch"


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_SETTING, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "clipmind" / "onnx"


def _versions() -> str:
    import onnxruntime
    import torch

    return f"torch{torch.__version__}-ort{onnxruntime.__version__}-f{FORMAT}"


def _graph_path(model_id: str, variant: str) -> Path:
    digest = hashlib.sha256(f"{model_id}|{variant}|{_versions()}".encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() else "-" for c in model_id.split("@")[0]).strip("-")
    return cache_dir() / f"{name}-{variant}-{digest}.onnx"


def _session(path: Path) -> Any:
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(1, torch.get_num_threads())  # the model's thread budget (torch_threads)
    options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning for the next call: on a few cores shared with the rest of the mesh
    # (and with the other encoder's process), spinning threads take the CPU the next call needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return np.asarray((reference * candidate).sum(axis=1) / np.maximum(norms, 1e-12))


def _checked(path: Path, feeds: Callable[[Sequence[str]], dict[str, np.ndarray]],
             reference: Callable[[Sequence[str]], np.ndarray], min_cosine: float) -> Encoder | None:
    """A session on ``path`` if it agrees with torch on the probe texts (one at a time and as one padded batch)."""
    session = _session(path)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)

    worst = 1.0
    for texts in [[t] for t in PROBE_TEXTS] + [list(PROBE_TEXTS)]:
        cosines = _cosines(reference(texts), run(feeds(texts)))
        worst = min(worst, float(cosines.min()) if np.isfinite(cosines).all() else -1.0)
    if worst < min_cosine:
        log.warning("ONNX graph %s: cosine %.5f against torch is under %.4f: not used", path.name, worst, min_cosine)
        return None
    log.info("ONNX graph %s in use (cosine against torch >= %.5f)", path.name, worst)
    return run


def _build(path: Path, export: Callable[[Path], None], quantize: bool) -> None:
    """Export (and quantize) into a temporary file beside ``path``, then rename: concurrent builders each write
    their own file, and a reader never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as work:
        plain = Path(work) / "model.onnx"
        export(plain)
        final = plain
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            final = Path(work) / "model.int8.onnx"
            # The quantizer logs a line per tensor it leaves alone and generic advice, on the root logger.
            logging.disable(logging.WARNING)
            try:
                quantize_dynamic(str(plain), str(final), weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
        os.replace(final, path)


def _runtime(model_id: str, variants: Sequence[tuple[str, bool, float]], export: Callable[[Path], None],
             feeds: Callable[[Sequence[str]], dict[str, np.ndarray]],
             reference: Callable[[Sequence[str]], np.ndarray]) -> tuple[Encoder, str] | None:
    """The first variant (name, quantized, min cosine) whose graph builds and passes the check."""
    try:
        for variant, quantize, min_cosine in variants:
            path = _graph_path(model_id, variant)
            if not path.is_file():
                _build(path, export, quantize)
            encoder = _checked(path, feeds, reference, min_cosine)
            if encoder is not None:
                return encoder, variant
    except Exception as exc:  # onnxruntime missing, an export the exporter cannot do, a full disk: torch stays
        log.warning("ONNX Runtime not used for %s (%s: %s): torch encodes its texts", model_id,
                    type(exc).__name__, exc)
    return None


# ---------------------------------------------------------------------------------------------- CLIP text


def _clip_tower(model: Any) -> Any:
    """open_clip's causal text tower, written out so the exported graph has a dynamic sequence axis.

    ``nn.MultiheadAttention`` traces its sequence length into a constant reshape; the same arithmetic (fused
    in-projection, scaled dot-product attention under the causal mask, out-projection) spelled out here keeps
    the axis dynamic. Pools at the end-of-text token (the highest id) and normalizes, as ``ClipModel`` does."""
    import torch
    import torch.nn.functional as F

    class ClipTextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            clip = self.clip
            length = tokens.shape[1]
            x = clip.token_embedding(tokens) + clip.positional_embedding[:length]
            mask = clip.attn_mask[:length, :length]
            for block in clip.transformer.resblocks:
                attn = block.attn
                heads, width = attn.num_heads, attn.embed_dim
                h = block.ln_1(x)
                q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
                q, k, v = (t.reshape(t.shape[0], -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                o = o.transpose(1, 2).reshape(o.shape[0], -1, width)
                x = x + block.ls_1(attn.out_proj(o))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            x = clip.ln_final(x)
            pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
            projection = clip.text_projection
            out = projection(pooled) if callable(projection) else pooled @ projection
            return F.normalize(out, dim=-1)

    return ClipTextTower().eval()


def clip_text_mirrored(model: Any) -> bool:
    """True for the open_clip text towers :func:`_clip_tower` writes out (causal, argmax pooling, plain blocks)."""
    import torch

    blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
    return (
        getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_projection", None) is not None
        and blocks is not None
        and all(isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) and not hasattr(b, "ln_1_kv")
                and getattr(b.attn, "in_proj_weight", None) is not None for b in blocks)
    )


def clip_text_runtime(clip: Any) -> tuple[Encoder, str] | None:
    """(encoder of ``{"tokens": int64 [n, length]}`` → unit vectors, variant) for a ``ClipModel``, or None."""
    if not enabled(clip.device) or not clip_text_mirrored(clip._model):
        return None
    import torch

    def tokens(texts: Sequence[str]) -> np.ndarray:
        ids = clip._tokenizer(list(texts))
        return np.ascontiguousarray(ids[:, : int(ids.argmax(dim=-1).max()) + 1].numpy().astype(np.int64))

    def export(path: Path) -> None:
        example = torch.from_numpy(tokens(PROBE_TEXTS[:2]))
        _export(_clip_tower(clip._model), (example,), path, ["tokens"], {"tokens": {0: "batch", 1: "length"}})

    return _runtime(clip.model_id, (("int8", True, MIN_COSINE_INT8), ("fp32", False, MIN_COSINE)), export,
                    lambda texts: {"tokens": tokens(texts)}, clip.embed_texts_torch)


# ---------------------------------------------------------------------------------------------- Sentence-BERT


def sbert_module(sbert: Any) -> Any:
    """An ``SbertModel``'s sentence-transformers pipeline as one torch module: word pieces (``input_ids``,
    ``attention_mask``) → BERT → mean pooling over the mask → L2 normalisation; what is exported here and by
    scripts/export-models. ValueError for a pipeline it does not mirror (not Transformer + mean Pooling +
    Normalize, or with a Dense layer)."""
    import torch

    kinds = [type(m).__name__ for m in sbert._model]
    pooling = sbert._model[kinds.index("Pooling")] if "Pooling" in kinds else None
    mode = str(getattr(pooling, "pooling_mode", "") or
               ("mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else ""))
    if kinds[:1] != ["Transformer"] or "mean" not in mode or "Normalize" not in kinds or "Dense" in kinds:
        raise ValueError(f"the Sentence-BERT pipeline {kinds} (pooling {mode!r}) is not Transformer, mean "
                         "Pooling, Normalize")
    bert = sbert._model[0].auto_model

    class SbertEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return SbertEncoder().eval()


def sbert_runtime(sbert: Any) -> tuple[Encoder, str] | None:
    """(encoder of ``{"input_ids", "attention_mask"}`` → unit vectors, variant) for an ``SbertModel``, or None."""
    if not enabled(sbert.device):
        return None
    import torch

    try:
        module = sbert_module(sbert)
    except ValueError as exc:
        log.info("%s: torch encodes its texts", exc)
        return None
    st = sbert._model

    def feeds(texts: Sequence[str]) -> dict[str, np.ndarray]:
        encoded = st.tokenizer(list(texts), padding=True, truncation=True, max_length=st.max_seq_length,
                               return_tensors="np")
        return {"input_ids": encoded["input_ids"].astype(np.int64),
                "attention_mask": encoded["attention_mask"].astype(np.int64)}

    def export(path: Path) -> None:
        feed = feeds(PROBE_TEXTS[:2])
        axes = {0: "batch", 1: "length"}
        _export(module, (torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])),
                path, ["input_ids", "attention_mask"], {"input_ids": axes, "attention_mask": axes})

    return _runtime(f"{sbert.model_id}|max{st.max_seq_length}", (("fp32", False, MIN_COSINE),), export, feeds,
                    sbert.embed_texts_torch)


def _export(module: Any, example: tuple[Any, ...], path: Path, names: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), input_names=names, output_names=["embedding"],
                          dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
