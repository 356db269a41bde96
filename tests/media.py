"""Deterministic test media made by ffmpeg: every expected value (cut times, cues) is known.

``make_scene_video`` concatenates lavfi sources with hard cuts at the cumulative scene durations into an
H.264 MP4 (+faststart) with optional sine audio and an optional mov_text subtitle track. The other
helpers make broken inputs: truncated, empty, text posing as video, audio only.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import pytest

from services.media.subtitles import Cue

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""The real test media beside the checkout (../shared/data)."""


def real_media(relative: str) -> Path:
    """``SHARED_DATA / relative``; the test is skipped when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real test media {path} is absent (see ../shared/data/README.md)")
    return path


@dataclass(frozen=True)
class SceneSpec:
    """One shot: ``duration_s`` seconds of the ffmpeg lavfi video source ``source`` (e.g. "testsrc2")."""

    duration_s: float
    source: str


CUT_SCENES: tuple[SceneSpec, ...] = (
    SceneSpec(8.0, "testsrc2"),
    SceneSpec(7.0, "color=c=red"),
    SceneSpec(9.0, "mandelbrot"),
    SceneSpec(6.0, "smptebars"),
    SceneSpec(6.0, "color=c=0x1040ff"),
)
"""Five very distinct shots, 36 s in all; cuts at 8, 15, 24 and 30 s."""

CUT_CUES: tuple[Cue, ...] = (
    Cue(0.5, 3.0, "A test pattern with moving colours."),
    Cue(9.0, 12.5, "Everything turns red."),
    Cue(16.0, 20.0, "The Mandelbrot set zooms in."),
    Cue(31.0, 34.0, "Finally a deep blue screen."),
)
"""Cues that fit ``CUT_SCENES``."""


def cut_times(scenes: Sequence[SceneSpec]) -> list[float]:
    """Times of the hard cuts between ``scenes`` (cumulative durations, the end excluded)."""
    return list(accumulate(s.duration_s for s in scenes))[:-1]


def _ffmpeg(*args: str) -> None:
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()[-1500:]
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed ({result.returncode}): {stderr}")


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt_text(cues: Sequence[Cue]) -> str:
    blocks = [
        f"{n}\n{_timestamp(c.start_s, ',')} --> {_timestamp(c.end_s, ',')}\n{c.text}\n"
        for n, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def write_srt(cues: Sequence[Cue], path: str | Path) -> Path:
    out = Path(path)
    out.write_text(srt_text(cues), encoding="utf-8")
    return out


def write_vtt(cues: Sequence[Cue], path: str | Path) -> Path:
    out = Path(path)
    blocks = [f"{_timestamp(c.start_s, '.')} --> {_timestamp(c.end_s, '.')}\n{c.text}\n" for c in cues]
    out.write_text("WEBVTT\n\n" + "\n".join(blocks), encoding="utf-8")
    return out


def make_scene_video(
    path: str | Path,
    scenes: Sequence[SceneSpec] = CUT_SCENES,
    subtitles: Sequence[Cue] | None = None,
    embed_subtitles: bool = True,
    size: str = "320x240",
    fps: int = 25,
    audio: bool = True,
) -> Path:
    """Render ``scenes`` back to back into an H.264 MP4 (+faststart) at ``path``; return the path.

    Cuts fall exactly at the cumulative durations (keep durations multiples of 1/fps). With
    ``subtitles`` and ``embed_subtitles`` a mov_text track (language eng) is added; with ``subtitles``
    and not ``embed_subtitles`` a sidecar ``<path>.srt`` is written next to the video instead.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    total = sum(s.duration_s for s in scenes)
    inputs: list[str] = []
    chains: list[str] = []
    for n, scene in enumerate(scenes):
        joiner = ":" if "=" in scene.source else "="
        inputs += ["-f", "lavfi", "-i", f"{scene.source}{joiner}size={size}:rate={fps}"]
        chains.append(f"[{n}:v]trim=duration={scene.duration_s},setpts=PTS-STARTPTS,format=yuv420p,setsar=1[v{n}]")
    labels = "".join(f"[v{n}]" for n in range(len(scenes)))
    graph = ";".join([*chains, f"{labels}concat=n={len(scenes)}:v=1:a=0[v]"])
    maps = ["-map", "[v]"]
    next_input = len(scenes)
    if audio:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={total}"]
        maps += ["-map", f"{next_input}:a"]
        next_input += 1
    codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(fps), "-pix_fmt", "yuv420p"]
    if audio:
        codecs += ["-c:a", "aac", "-b:a", "64k"]
    if subtitles and embed_subtitles:
        srt = out.with_name(out.name + ".tmp.srt")
        write_srt(subtitles, srt)
        inputs += ["-i", str(srt)]
        maps += ["-map", f"{next_input}:s"]
        codecs += ["-c:s", "mov_text", "-metadata:s:s:0", "language=eng"]
    try:
        _ffmpeg(*inputs, "-filter_complex", graph, *maps, *codecs, "-t", str(total),
                "-movflags", "+faststart", "-fflags", "+bitexact", str(out))  # fmt: skip
    finally:
        if subtitles and embed_subtitles:
            out.with_name(out.name + ".tmp.srt").unlink(missing_ok=True)
    if subtitles and not embed_subtitles:
        write_srt(subtitles, out.with_suffix(".srt"))
    return out


def make_moov_at_end_mp4(src: str | Path, dst: str | Path) -> Path:
    """Remux ``src`` into an MP4 whose index (moov) comes after the media data (no faststart)."""
    out = Path(dst)
    _ffmpeg("-i", str(src), "-map", "0", "-c", "copy", str(out))
    return out


def make_truncated_mp4(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` fraction of ``src``'s bytes to ``dst`` (an upload cut short)."""
    data = Path(src).read_bytes()
    out = Path(dst)
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def make_empty_file(path: str | Path) -> Path:
    out = Path(path)
    out.write_bytes(b"")
    return out


def make_text_file(path: str | Path) -> Path:
    """Plain text under whatever name ``path`` has (e.g. ``clip.mp4``)."""
    out = Path(path)
    out.write_text("This is not a video.\n" * 200, encoding="utf-8")
    return out


def make_audio_only(path: str | Path, duration_s: float = 3.0) -> Path:
    """A sine tone with no video stream (M4A/MP3/... by the name's extension)."""
    out = Path(path)
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={duration_s}", str(out))
    return out


def make_raw_h264(path: str | Path, duration_s: float = 2.0) -> Path:
    """An H.264 elementary stream (no container): it decodes, but has no known duration."""
    out = Path(path)
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={duration_s}",
            "-c:v", "libx264", "-preset", "ultrafast", "-f", "h264", str(out))  # fmt: skip
    return out


def make_still_image(path: str | Path) -> Path:
    """One PNG/JPEG frame (by the name's extension)."""
    out = Path(path)
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240", "-frames:v", "1", str(out))
    return out


def make_audio_with_cover(path: str | Path, duration_s: float = 3.0) -> Path:
    """An M4A/MP3 with embedded cover art (an mjpeg/png ``attached_pic`` stream) and no real video."""
    out = Path(path)
    cover = out.with_name(out.name + ".cover.jpg")
    make_still_image(cover)
    try:
        _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={duration_s}", "-i", str(cover),
                "-map", "0:a", "-map", "1:v", "-c:v", "mjpeg",
                "-disposition:v:0", "attached_pic", str(out))  # fmt: skip
    finally:
        cover.unlink(missing_ok=True)
    return out
