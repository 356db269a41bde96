"""The pipeline's media stage against the cost of decoding the file once.

    .venv/bin/python bench/ingest.py                  # the three files below, 3 rounds
    .venv/bin/python bench/ingest.py --rounds 5 --files a.mp4 b.mkv

Per file it measures, in the same run and interleaved round by round (so a change in the machine's load falls
on both alike):

* the decode floor: ``ffmpeg -threads 0 -i FILE -f null -`` (every stream decoded once, nothing else);
* the media stage as ``VideoProcessor`` runs it: ``probe`` (PROBE), then one ``MediaPass`` (THUMBNAIL: until
  the thumbnail is written; SCENES: the scenes and every keyframe as JPEG), in a fresh Python process whose
  imports are done before the clock starts (a worker is long-lived). Its peak RSS is the process's plus its
  largest tool child's (``getrusage``), each at its own peak.

It prints wall seconds (median and best of the rounds), the ratio stage / floor on each, CPU seconds (user +
system, children included: less sensitive to a shared machine than wall time), the per-stage times and the
scene count. Files: a generated 60 s 1280x720 30 fps H.264 + AAC (x264 veryfast, made once in ``--work``),
../shared/data's tears_of_steel WebM (VP8 + Vorbis) and popeye_p1 (1440x1074 HEVC). Figures, not a test.

``--whole``: the whole ingest through a mesh started for it (CLIP on random weights, Whisper base real):
each file uploaded over gRPC through Envoy and timed from the end of the upload to READY (every stage: media,
transcript, CLIP and SBERT embedding through Triton, index), as a real-time multiple (video seconds per wall
second), with each stage's time from the job's events. The generated file and the WebM go with a subtitle
sidecar (no speech recognition: "without ASR"); the espeak-ng three-topic video of tests/e2e/test_speech.py
goes without one (speech recognition on; the TRANSCRIPT stage reports Whisper's real-time factor).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen/python")]

DATA = ROOT.parent / "shared" / "data"
REAL = [DATA / "tears_of_steel" / "tears-of-steel-battle-clip-medium.webm", DATA / "popeye" / "popeye_p1.mkv"]
GENERATED_SHOTS = [  # (seconds, lavfi source): 60 s with hard cuts between very different pictures
    (12, "testsrc2"), (8, "gradients=speed=0.05"), (6, "smptehdbars"), (10, "testsrc2=alpha=0"),
    (8, "testsrc"), (6, "rgbtestsrc"), (4, "color=c=0x2060a0"), (6, "gradients=speed=0.02:c0=red:c1=blue"),
]


def generated_720p(folder: Path) -> Path:
    """The 60 s 1280x720 30 fps H.264 (x264 veryfast, CRF 23) + AAC file, made once."""
    out = folder / "generated-720p30-60s.mp4"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    inputs, chains = [], []
    for n, (seconds, source) in enumerate(GENERATED_SHOTS):
        joiner = ":" if "=" in source else "="
        inputs += ["-f", "lavfi", "-i", f"{source}{joiner}size=1280x720:rate=30:duration={seconds}"]
        chains.append(f"[{n}:v]format=yuv420p,setsar=1[v{n}]")
    total = sum(seconds for seconds, _ in GENERATED_SHOTS)
    graph = ";".join([*chains, "".join(f"[v{n}]" for n in range(len(chains)))
                      + f"concat=n={len(chains)}:v=1:a=0[v]"])
    inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={total}"]
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs, "-filter_complex", graph,
                    "-map", "[v]", "-map", f"{len(chains)}:a", "-c:v", "libx264", "-preset", "veryfast",
                    "-crf", "23", "-g", "60", "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart",
                    str(out)], check=True)  # fmt: skip
    return out


def floor(path: Path) -> dict[str, float]:
    """Wall and CPU seconds of one ``ffmpeg -threads 0 -i FILE -f null -``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-threads", "0", "-i", str(path), "-f", "null", "-"],
                   check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime}


def stage(path: Path) -> dict[str, float]:
    """The media stage in a fresh process (``--stage``), its figures as a dict."""
    result = subprocess.run([sys.executable, __file__, "--stage", str(path)], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


async def _stage_in_process(path: Path) -> dict[str, float]:
    from services.media.probe import probe
    from services.media.scenes import DEFAULT_MIN_SCENE_S, DEFAULT_THRESHOLD, MediaPass

    started = time.perf_counter()
    cpu_before = _cpu()
    info = await probe(path)
    probed = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as out:
        async with MediaPass(path, info.duration_s, out, thumbnail_at_s=min(1.0, info.duration_s / 2),
                             threshold=DEFAULT_THRESHOLD, min_scene_s=DEFAULT_MIN_SCENE_S,
                             stream=info.video_stream) as media:
            await media.thumbnail()
            thumbnailed = time.perf_counter()
            analysis = await media.result()
    done = time.perf_counter()
    return {
        "wall": done - started, "cpu": _cpu() - cpu_before, "probe": probed - started,
        "thumbnail": thumbnailed - probed, "scenes": done - thumbnailed, "scene_count": len(analysis.scenes),
        "frames": analysis.frames, "held": analysis.peak_frames_held,
        "python_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ffmpeg_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _cpu() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def machine() -> str:
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    return (f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.python_implementation()} "
            f"{platform.python_version()}, {version}; load average {os.getloadavg()[0]:.1f} at start")


def whole(files: list[tuple[Path, Path | None]], rounds: int) -> None:
    """Upload → READY through a mesh (see the module doc)."""
    from clipmind.pipeline.v1 import pipeline_service_pb2 as pipeline_pb

    from services.launcher import Mesh, MeshConfig, MeshPorts
    from services.launcher.credentials import admin_api_key, user_api_key
    from tests.e2e.clients import authenticated_channel, grpc_upload, wait_ready, watch_job

    env = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_WHISPER_WEIGHTS": "base", "CLIPMIND_MODEL_SEED": "0",
           "CLIPMIND_RATE_LIMIT_UPLOADS_PER_HOUR": "100000", "CLIPMIND_RATE_LIMIT_REQUESTS_PER_HOUR": "1000000"}
    os.environ.update(env)  # Triton takes the model settings from the launcher's environment
    with tempfile.TemporaryDirectory(prefix="clipmind-bench-whole-") as state:
        mesh = Mesh(MeshConfig(state_dir=Path(state), ports=MeshPorts.free(), extra_env=env))
        endpoints = mesh.start()
        try:
            url = endpoints.envoy_url
            assert url is not None
            admin = admin_api_key(url, mesh.admin_password_path)
            channel = authenticated_channel(url.removeprefix("http://"), user_api_key(url, admin, "bench@x.dev"))
            print(f"{'file':<34} {'video s':>7} {'wall s':>7} {'x real time':>11}  stages (s, median)")
            for path, sidecar in files:
                walls: list[float] = []
                stages: dict[str, list[float]] = {}
                duration = 0.0
                note = ""
                for _ in range(rounds):
                    video = grpc_upload(channel, path, sidecar=sidecar)
                    started = time.perf_counter()
                    events = watch_job(channel, video.job, timeout=1800)
                    done = wait_ready(channel, video.name)
                    walls.append(time.perf_counter() - started)
                    duration = done.duration_seconds
                    opened: dict[str, float] = {}
                    for event in events:
                        name = pipeline_pb.Stage.Name(event.stage).removeprefix("STAGE_").lower()
                        at = event.create_time.ToDatetime().timestamp()
                        state_name = pipeline_pb.StageState.Name(event.stage_state)
                        if state_name == "STAGE_STATE_STARTED":
                            opened[name] = at
                        elif state_name in ("STAGE_STATE_COMPLETED", "STAGE_STATE_SKIPPED") and name in opened:
                            stages.setdefault(name, []).append(at - opened[name])
                            if name == "transcript":
                                note = event.message
                wall = statistics.median(walls)
                parts = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in stages.items())
                label = path.name[:26] + (" +srt" if sidecar else " asr")
                print(f"{label:<34} {duration:7.1f} {wall:7.2f} {duration / wall:10.1f}x  {parts}")
                print(f"{'':<36}transcript: {note[:150]}")
            channel.close()
        finally:
            mesh.stop()


def sidecar_for(path: Path, folder: Path) -> Path:
    """A short SRT next to the copy of ``path`` (so the upload carries a sidecar and skips speech recognition)."""
    srt = folder / f"{path.stem}.srt"
    srt.write_text("1\n00:00:01,000 --> 00:00:04,000\nthe harbour at dawn\n\n"
                   "2\n00:00:10,000 --> 00:00:14,000\na ship sails past the lighthouse\n")
    return srt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipmind-bench-ingest",
                        help="where the generated file is made (once)")
    parser.add_argument("--files", type=Path, nargs="*", help="instead of the three default files")
    parser.add_argument("--stage", type=Path, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--whole", action="store_true", help="whole ingest through a mesh (see above)")
    args = parser.parse_args()
    if args.whole:
        from tests.e2e.test_speech import make_spoken_video

        args.work.mkdir(parents=True, exist_ok=True)
        print(f"# {machine()}")
        base = args.files or [generated_720p(args.work), *[p for p in REAL[:1] if p.exists()]]
        spoken = args.work / "spoken"
        spoken.mkdir(exist_ok=True)
        whole([*[(p, sidecar_for(p, args.work)) for p in base], (make_spoken_video(spoken)[0], None)], args.rounds)
        return
    if args.stage:
        import services.media.scenes  # noqa: F401  (imports before the clock: a worker has them loaded)

        print(json.dumps(asyncio.run(_stage_in_process(args.stage))))
        return

    files = args.files or [generated_720p(args.work), *[p for p in REAL if p.exists()]]
    print(f"# {machine()}")
    print(f"# {args.rounds} rounds, floor and stage interleaved (order alternating); wall s median (best)")
    header = (f"{'file':<44} {'floor':>13} {'stage':>13} {'ratio':>11} {'cpu floor/stage':>16} "
              f"{'probe':>6} {'thumb':>6} {'scenes':>7} {'n':>3} {'peak RSS MB (py+ffmpeg)':>24}")
    print(header)
    for path in files:
        floors, stages = [], []
        for round_ in range(args.rounds):
            if round_ % 2:
                stages.append(stage(path))
                floors.append(floor(path))
            else:
                floors.append(floor(path))
                stages.append(stage(path))
        fw = [f["wall"] for f in floors]
        sw = [s["wall"] for s in stages]
        ratio = statistics.median(s / f for s, f in zip(sw, fw, strict=True))

        def median(key: str, runs: list[dict[str, float]] = stages) -> float:
            return statistics.median(run[key] for run in runs)

        python_mb, ffmpeg_mb = max(s["python_mb"] for s in stages), max(s["ffmpeg_mb"] for s in stages)
        print(f"{path.name[:44]:<44} {statistics.median(fw):6.2f} ({min(fw):4.2f}) {statistics.median(sw):6.2f} "
              f"({min(sw):4.2f}) {ratio:5.2f}x ({min(sw) / min(fw):.2f}) {median('cpu', floors):7.2f}/"
              f"{median('cpu'):5.2f}  {median('probe'):6.2f} {median('thumbnail'):6.2f} {median('scenes'):7.2f} "
              f"{stages[-1]['scene_count']:>3} {python_mb:10.0f} + {ffmpeg_mb:3.0f} = {python_mb + ffmpeg_mb:4.0f}")
    print("# ratio: median of the per-round ratios (in brackets: best stage / best floor); target <= 1.25x")


if __name__ == "__main__":
    main()
