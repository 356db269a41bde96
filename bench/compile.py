"""Compilation render speed: stream copy against one filter graph (services/media/compose.py).

    .venv/bin/python bench/compile.py                  # 2 rounds of each way
    .venv/bin/python bench/compile.py --rounds 1 --work /tmp/compile-bench

Three 60 s 1280x720 30 fps H.264 + AAC sources are generated once in ``--work`` (x264 veryfast, a keyframe
every 2 s, each a different lavfi picture and tone). Then, round by round and interleaved (so a change in the
machine's load falls on both alike):

* **stream copy**: 10 clips of 4 s from one source, default options (``compose`` picks stream copy);
* **filter graph**: 10 clips of 4 s from the three sources in turn, crossfades of 0.5 s, a 3 s title card,
  looped music ducked under the clips, 1280x720 (one ffmpeg run: decode, filter, x264 veryfast CRF 23 + AAC).

It prints the machine (cores, load average before and after, ffmpeg version), and per way the wall seconds
(median and best), the output's length and the real-time multiple (output seconds per wall second). Figures,
not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen/python")]

from services.media.compose import compose  # noqa: E402
from services.media.compose_plan import ComposeOptions, ComposeResult, Piece  # noqa: E402

SOURCES = (("testsrc2", 440), ("smptehdbars", 660), ("testsrc", 880))
SOURCE_S = 60
CLIP_S = 4.0
CLIPS = 10


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_sources(work: Path) -> tuple[list[Path], Path]:
    """The three sources and a 20 s music chord, made once (kept in ``work`` for the next run)."""
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (picture, tone) in enumerate(SOURCES):
        path = work / f"source{n}.mp4"
        if not path.exists():
            print(f"generating {path.name} ({picture}, {SOURCE_S} s 1280x720 30 fps)...", flush=True)
            _ffmpeg("-f", "lavfi", "-i", f"{picture}=size=1280x720:rate=30", "-f", "lavfi", "-i",
                    f"sine=frequency={tone}:sample_rate=48000", "-af", "volume='if(lt(mod(t,6),3),4,0)':eval=frame",
                    "-t", str(SOURCE_S), "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path))  # fmt: skip
        paths.append(path)
    music = work / "music.m4a"
    if not music.exists():
        _ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:duration=20", "-f", "lavfi", "-i",
                "sine=frequency=330:duration=20", "-filter_complex", "amix=inputs=2", "-c:a", "aac", str(music))
    return paths, music


def _starts() -> list[float]:
    """Ten in points spread over a source, none on a keyframe (every 2 s)."""
    return [1.3 + n * (SOURCE_S - CLIP_S - 2) / CLIPS for n in range(CLIPS)]


async def _timed(pieces: list[Piece], options: ComposeOptions, out: Path) -> tuple[float, ComposeResult]:
    began = time.perf_counter()
    result = await compose(pieces, options, out)
    return time.perf_counter() - began, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipmind-bench-compile")
    args = parser.parse_args()
    sources, music = make_sources(args.work)
    copy_pieces = [Piece(sources[0], start, start + CLIP_S) for start in _starts()]
    graph_pieces = [Piece(sources[n % 3], start, start + CLIP_S) for n, start in enumerate(_starts())]
    graph_options = ComposeOptions(width=1280, height=720, crossfade_s=0.5, title="Compilation benchmark",
                                   title_s=3.0, music=music)
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} (1 min) before; {version}")
    ways: dict[str, list[float]] = {"stream copy": [], "filter graph": []}
    results: dict[str, ComposeResult] = {}
    asyncio.run(_rounds(args.rounds, args.work, copy_pieces, graph_pieces, graph_options, ways, results))
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after")
    print(f"{'way':<14}{'method':<14}{'output s':>9}{'median s':>10}{'best s':>8}{'x real time':>13}")
    for way, times in ways.items():
        result = results[way]
        median = statistics.median(times)
        print(f"{way:<14}{result.method:<14}{result.duration_s:>9.2f}{median:>10.2f}{min(times):>8.2f}"
              f"{result.duration_s / median:>13.1f}")


async def _rounds(
    rounds: int, work: Path, copy_pieces: list[Piece], graph_pieces: list[Piece], graph_options: ComposeOptions,
    ways: dict[str, list[float]], results: dict[str, ComposeResult],
) -> None:
    """Each way once per round, the order alternating."""
    for round_ in range(rounds):
        for way in ways if round_ % 2 == 0 else reversed(list(ways)):
            pieces, options = (copy_pieces, ComposeOptions()) if way == "stream copy" else (graph_pieces, graph_options)
            seconds, results[way] = await _timed(pieces, options, work / f"out-{way.replace(' ', '-')}.mp4")
            ways[way].append(seconds)
            print(f"  round {round_ + 1}: {way}: {seconds:.2f} s ({results[way].method})", flush=True)


if __name__ == "__main__":
    main()
