"""Query encoding latency: one short query through both text encoders (CLIP text, Sentence-BERT), p50 per way.

    .venv/bin/python bench/query_encoders.py --queries 200

What a search waits for before its vector queries can start. Measured ways, interleaved query by query (every
way once per round, so a noisy machine's drift falls on all of them alike):

* ``triton``: through a private tritonserver serving model_repository/ (what the mesh does), the two encoders
  one after the other (``sequential``) and at once (``concurrent``), and each alone;
* in process, the model classes on ONNX Runtime (``CLIPMIND_TEXT_RUNTIME=onnx``, services/models/onnx_text.py)
  and on torch (``embed_texts_torch``): what the encoding itself costs without Triton around it.

CLIP uses seeded random weights (speed does not depend on the values); Sentence-BERT is real. Every query is
distinct (a number appended), so no cache answers. Figures, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen/python")]

from bench.inference import machine, private_triton  # noqa: E402

QUERIES = ["a dog jumping into the pool", "where she talks about quarterly revenue", "red car at night",
           "the speaker laughs", "budget plans for the spring release"]


def query(i: int) -> str:
    return f"{QUERIES[i % len(QUERIES)]} {i}"


async def main_async(args: argparse.Namespace) -> None:
    from services.common.config import CommonSettings
    from services.inference.factory import make_inference
    from services.models.clip import ClipModel
    from services.models.sbert import SbertModel

    env = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_MODEL_SEED": "0"}
    with private_triton(["clip_text", "sbert"], env) as url:
        triton = make_inference(CommonSettings(inference_backend="triton", triton_url=url, clip_weights="random",
                                               model_seed=0, inference_timeout_s=60.0))
        clip, sbert = ClipModel.load(weights="random", seed=0), SbertModel.load()
        print(f"# in process: CLIP text on {clip.text_runtime}, Sentence-BERT on {sbert.runtime}")

        async def sequential(text: str) -> None:
            await triton.embed_sentences([text])
            await triton.embed_clip_texts([text])

        async def concurrent(text: str) -> None:
            await asyncio.gather(triton.embed_sentences([text]), triton.embed_clip_texts([text]))

        async def in_process(fn: Callable[[list[str]], object]) -> Callable[[str], Awaitable[None]]:
            async def call(text: str) -> None:
                fn([text])
            return call

        ways: dict[str, Callable[[str], Awaitable[None]]] = {
            "triton, both one after the other": sequential,
            "triton, both at once": concurrent,
            "triton, sbert alone": lambda t: triton.embed_sentences([t]),
            "triton, clip_text alone": lambda t: triton.embed_clip_texts([t]),
            "in process, both on ONNX Runtime": await in_process(lambda ts: (sbert.embed_texts(ts),
                                                                             clip.embed_texts(ts))),
            "in process, both on torch": await in_process(lambda ts: (sbert.embed_texts_torch(ts),
                                                                      clip.embed_texts_torch(ts))),
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        for i in range(5):  # warm-up
            for way in ways.values():
                await way(f"warm up {i}")
        names = list(ways)
        for i in range(args.queries):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                await ways[name](query(i * len(names) + names.index(name)))
                times[name].append((time.perf_counter() - started) * 1000)
        await triton.close()
    print(f"# {machine('cpu')}; {args.queries} queries per way, interleaved")
    for name, ms in times.items():
        ms.sort()
        print(f"{name:<36} p50 {statistics.median(ms):6.1f} ms  p90 {ms[int(0.9 * (len(ms) - 1))]:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
