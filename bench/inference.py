"""Inference throughput: Triton vs in-process torch (and ONNX Runtime), per model, batch and concurrency.

    .venv/bin/python bench/inference.py --quick                 # CPU, a few minutes: batch 1/8, concurrency 1/8
    .venv/bin/python bench/inference.py                         # full grid: batch 1/8/32, concurrency 1/8
    .venv/bin/python bench/inference.py --onnx                  # + the exported graphs (scripts/export-models)
    .venv/bin/python bench/inference.py --device cuda --onnx --triton-url host:8001   # on a GPU machine

Prints one row per (backend, model, batch, concurrency): items/s (images/s for clip_image, sentences/s for
sbert and clip_text) or, for whisper, the real-time factor (processing seconds per second of audio, lower is
better), as the median of interleaved rounds (every backend once per round, so drift in the machine's load
falls on all of them alike) with the rounds' min and max. Then the issue's two targets, per embedding model:

* Triton overhead <= 10% of in-process torch at batch 8 (concurrency 1): 1 - triton/torch throughput;
* dynamic batching >= 2x: Triton throughput at concurrency 8 over concurrency 1 (batch 1 requests).

Backends: ``triton`` (TritonInference against a private tritonserver started from model_repository/ like
tests/integration/conftest.py, or --triton-url), ``torch`` (TorchInference, in-process), ``onnx`` (the
exported graphs in ONNX Runtime, CUDA EP with --device cuda; preprocessing with the model classes).
CLIP and Whisper use seeded random weights unless --clip-weights / --whisper-weights say otherwise (speed
does not depend on the weights' values); Sentence-BERT is real. Figures, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

MODELS = ("clip_image", "clip_text", "sbert", "whisper")
UNITS = {"clip_image": "images/s", "clip_text": "sentences/s", "sbert": "sentences/s", "whisper": "RTF"}
OVERHEAD_TARGET = 0.10
BATCHING_TARGET = 2.0
SENTENCES = [
    "a dog catches a frisbee on the beach",
    "the speaker explains how the engine works",
    "two people are cooking pasta in a small kitchen",
    "aerial view of a city at night with traffic",
    "quarterly revenue grew five percent according to the report",
]


@dataclass(frozen=True)
class Cell:
    """One (backend, model, batch, concurrency) cell: its figure in each round."""

    backend: str
    model: str
    batch: int
    concurrency: int
    calls: int
    rounds: tuple[float, ...]

    @property
    def value(self) -> float:
        """Median over the rounds of items/s, or of the real-time factor for whisper."""
        return statistics.median(self.rounds) if self.rounds else float("nan")


def round_value(model: str, calls: int, batch: int, seconds: float, audio_s: float) -> float:
    if model == "whisper":
        return seconds / (calls * audio_s) if calls and audio_s else float("nan")
    return calls * batch / seconds if seconds else 0.0


# ------------------------------------------------------------------------------------------ workloads


def sample_images(n: int) -> list[bytes]:
    """JPEG keyframe-sized images (640x360), all different."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        pixels = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def sample_audio(seconds: float) -> np.ndarray:
    t = np.arange(int(16_000 * seconds), dtype=np.float32) / 16_000
    return (0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).normal(size=t.shape)).astype(np.float32)


def call_for(backend: Any, model: str, batch: int, audio: np.ndarray) -> Callable[[], Awaitable[Any]]:
    if model == "clip_image":
        images = sample_images(batch)
        return lambda: backend.embed_images(images)
    texts = [SENTENCES[i % len(SENTENCES)] + f" #{i}" for i in range(batch)]
    if model == "clip_text":
        return lambda: backend.embed_clip_texts(texts)
    if model == "sbert":
        return lambda: backend.embed_sentences(texts)
    return lambda: backend.transcribe(audio)


async def measure(
    call: Callable[[], Awaitable[Any]], concurrency: int, duration_s: float, min_calls: int
) -> tuple[int, float]:
    """Calls completed by ``concurrency`` closed-loop workers in about ``duration_s``, and the wall time."""
    done = 0
    start = time.perf_counter()
    stop = start + duration_s

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop or done < min_calls:
            await call()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - start


# ------------------------------------------------------------------------------------------ backends


class OnnxInference:
    """The exported graphs (scripts/export-models layout) in ONNX Runtime; preprocessing by the model classes."""

    backend = "onnx"

    def __init__(self, onnx_dir: Path, *, clip_weights: str, seed: int, device: str, threads: int = 1) -> None:
        import onnxruntime as ort

        from services.models.clip import ClipModel
        from services.models.sbert import SbertModel

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.sessions = {}
        for name in ("clip_image", "clip_text", "sbert"):
            path = onnx_dir / f"{name}_onnx" / "1" / "model.onnx"
            if not path.is_file():
                raise SystemExit(f"--onnx: {path} is missing; run scripts/export-models --out {onnx_dir} first")
            self.sessions[name] = ort.InferenceSession(str(path), providers=providers)
        self.clip = ClipModel.load("ViT-B-32", clip_weights, seed, "cpu")
        self.sbert = SbertModel.load()
        self.tokenize_clip = self.clip._tokenizer if hasattr(self.clip, "_tokenizer") else None
        st = getattr(self.sbert, "model", None) or self.sbert._model
        self.bert_tokenizer, self.max_len = st.tokenizer, st.max_seq_length
        self._pool = ThreadPoolExecutor(max_workers=threads)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def _images(self, images: Sequence[bytes]) -> np.ndarray:
        pixels = self.clip.preprocess(images)[0].numpy()
        return self.sessions["clip_image"].run(["EMBEDDING"], {"PIXELS": pixels})[0]

    def _clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        import open_clip

        tokenize = self.tokenize_clip or open_clip.get_tokenizer("ViT-B-32")
        return self.sessions["clip_text"].run(["EMBEDDING"], {"TOKENS": tokenize(list(texts)).numpy()})[0]

    def _sentences(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.bert_tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_len, return_tensors="np"
        )
        feed = {
            "INPUT_IDS": enc["input_ids"].astype(np.int64),
            "ATTENTION_MASK": enc["attention_mask"].astype(np.int64),
        }
        return self.sessions["sbert"].run(["EMBEDDING"], feed)[0]

    async def embed_images(self, images: Sequence[bytes]) -> Any:
        return await self._run(self._images, images)

    async def embed_clip_texts(self, texts: Sequence[str]) -> Any:
        return await self._run(self._clip_texts, texts)

    async def embed_sentences(self, texts: Sequence[str]) -> Any:
        return await self._run(self._sentences, texts)

    async def transcribe(self, audio: np.ndarray) -> Any:
        raise NotImplementedError("whisper is not exported to ONNX")

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


@contextlib.contextmanager
def private_triton(models: Sequence[str], env: dict[str, str]):
    """tritonserver from the nvidia-pytriton wheel on free ports, serving model_repository/ (like the tests)."""
    from services.launcher import EmbeddedTriton, free_port

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    state = Path(tempfile.mkdtemp(prefix="clipmind-bench-"))
    server = EmbeddedTriton(
        state / "triton", state / "triton.log", grpc_port=free_port(), http_port=free_port(), models=list(models)
    )
    try:
        started = time.perf_counter()
        server.start()
        ready_s = time.perf_counter() - started
        print(f"# tritonserver ready in {ready_s:.0f}s at {server.url} (log: {state / 'triton.log'})")
        yield server.url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------------------ report


def table(cells: Sequence[Cell]) -> str:
    rows = [("backend", "model", "batch", "conc", "calls", "median", "min", "max", "unit")]
    for c in cells:
        fmt = "{:.3f}" if c.model == "whisper" else "{:.1f}"
        rows.append(
            (
                c.backend,
                c.model,
                str(c.batch),
                str(c.concurrency),
                str(c.calls),
                fmt.format(c.value),
                fmt.format(min(c.rounds)),
                fmt.format(max(c.rounds)),
                UNITS[c.model],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(v.rjust(w) if i >= 2 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def targets(cells: Sequence[Cell]) -> list[str]:
    by = {(c.backend, c.model, c.batch, c.concurrency): c.value for c in cells}
    lines = []
    for model in ("clip_image", "clip_text", "sbert"):
        triton8, torch8 = by.get(("triton", model, 8, 1)), by.get(("torch", model, 8, 1))
        if triton8 and torch8:
            overhead = 1 - triton8 / torch8
            verdict = "holds" if overhead <= OVERHEAD_TARGET else "does NOT hold"
            lines.append(
                f"{model:10s} Triton overhead at batch 8: {overhead:+.1%} of torch "
                f"({triton8:.1f} vs {torch8:.1f} {UNITS[model]}; target <= {OVERHEAD_TARGET:.0%}): {verdict}"
            )
        one, eight = by.get(("triton", model, 1, 1)), by.get(("triton", model, 1, 8))
        if one and eight:
            gain = eight / one
            verdict = "holds" if gain >= BATCHING_TARGET else "does NOT hold"
            lines.append(
                f"{model:10s} dynamic batching, concurrency 8 vs 1 (batch 1): {gain:.2f}x "
                f"({eight:.1f} vs {one:.1f} {UNITS[model]}; target >= {BATCHING_TARGET:.0f}x): {verdict}"
            )
    return lines


def machine(device: str) -> str:
    cores = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return f"{platform.machine()}, {cores} cores, {mem:.0f} GiB RAM, {gpu}; device={device}"


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="batch 1,8; concurrency 1,8; 2 s per cell in 2 rounds; 2 s of audio"
    )
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--backends", default="triton,torch", help="comma-separated of triton, torch, onnx")
    p.add_argument("--onnx", action="store_true", help="add the onnx backend (exported graphs in ONNX Runtime)")
    p.add_argument("--onnx-dir", type=Path, default=ROOT / "deploy" / "triton-gpu")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per cell and backend (after a warm-up call)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell; figures are their median")
    p.add_argument("--min-calls", type=int, default=2, help="calls per cell at least, however long they take")
    p.add_argument("--audio-seconds", type=float, default=10.0, help="length of the whisper clip")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch/onnx device")
    p.add_argument("--triton-url", default="", help="use this Triton instead of starting a private one")
    p.add_argument("--clip-weights", default="random")
    p.add_argument("--whisper-weights", default="random")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.duration, args.rounds, args.audio_seconds, args.min_calls = "1,8", 2.0, 2, 2.0, 1
    args.models = [m for m in args.models.split(",") if m]
    args.backends = [b for b in args.backends.split(",") if b] + (["onnx"] if args.onnx else [])
    args.batches = [int(b) for b in args.batches.split(",")]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


async def bench(backends: dict[str, Any], args: argparse.Namespace, audio: np.ndarray) -> list[Cell]:
    """Every cell, the backends interleaved: ``--rounds`` rounds of ``duration / rounds`` seconds each, every
    backend once per round (the order rotating), so a change in the machine's load during the run falls on
    all backends alike instead of on whichever ran last."""
    audio_s = len(audio) / 16_000
    cells = []
    for model in args.models:
        names = [name for name in backends if not (name == "onnx" and model == "whisper")]
        for batch in [1] if model == "whisper" else args.batches:
            for concurrency in args.concurrency:
                calls = {name: call_for(backends[name], model, batch, audio) for name in names}
                for name in names:
                    await calls[name]()  # warm-up: first-call allocations, lazy loads
                rounds: dict[str, list[float]] = {name: [] for name in names}
                done = dict.fromkeys(names, 0)
                for r in range(args.rounds):
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        n, seconds = await measure(
                            calls[name], concurrency, args.duration / args.rounds, args.min_calls
                        )
                        done[name] += n
                        rounds[name].append(round_value(model, n, batch, seconds, audio_s))
                for name in names:
                    cell = Cell(name, model, batch, concurrency, done[name], tuple(rounds[name]))
                    print(
                        f"  {name:6s} {model:10s} batch {batch:2d} conc {concurrency}: {cell.value:.3f} {UNITS[model]}"
                        f" (rounds {', '.join(f'{v:.3g}' for v in cell.rounds)})",
                        flush=True,
                    )
                    cells.append(cell)
    return cells


async def open_backend(name: str, args: argparse.Namespace, triton_url: str) -> Any:
    from services.common.config import CommonSettings
    from services.inference.factory import make_inference, torch_inference

    if name == "onnx":
        return OnnxInference(args.onnx_dir, clip_weights=args.clip_weights, seed=args.seed, device=args.device)
    settings = CommonSettings(
        inference_backend=name,
        triton_url=triton_url,
        clip_weights=args.clip_weights,
        whisper_weights=args.whisper_weights,
        model_seed=args.seed,
        inference_timeout_s=600.0,
    )
    if name == "torch" and args.device != "cpu":
        return torch_inference(settings, device=args.device)
    return make_inference(settings, max_parallel_requests=8) if name == "triton" else make_inference(settings)


async def run(args: argparse.Namespace, triton_url: str) -> list[Cell]:
    audio = sample_audio(args.audio_seconds)
    backends: dict[str, Any] = {}
    try:
        for name in args.backends:
            backends[name] = await open_backend(name, args, triton_url)
        return await bench(backends, args, audio)
    finally:
        for backend in backends.values():
            await backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"# {machine(args.device)}")
    print(
        f"# models {','.join(args.models)}; backends {','.join(args.backends)}; batches {args.batches}; "
        f"concurrency {args.concurrency}; {args.duration}s per cell; clip={args.clip_weights} "
        f"whisper={args.whisper_weights} sbert=real; whisper clip {args.audio_seconds}s"
    )
    env = {
        "CLIPMIND_CLIP_WEIGHTS": args.clip_weights,
        "CLIPMIND_WHISPER_WEIGHTS": args.whisper_weights,
        "CLIPMIND_MODEL_SEED": str(args.seed),
    }
    with contextlib.ExitStack() as stack:
        url = args.triton_url
        if "triton" in args.backends and not url:
            url = stack.enter_context(private_triton(args.models, env))
        os.environ.update(env)
        cells = asyncio.run(run(args, url or "127.0.0.1:1"))
    print()
    print(table(cells))
    print()
    for line in targets(cells) or [
        "targets: not measured (need triton and torch at batch 1 and 8, concurrency 1 and 8)"
    ]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
