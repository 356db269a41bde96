"""Compilations rendered by real ffmpeg (services.media.compose) from generated sources whose every expected
value is known: sizes, rates, where their audio is loud and where silent, their keyframes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from services.common.errors import Internal, NotFound
from services.media.compose import compose
from services.media.compose_plan import FILTER_GRAPH, STREAM_COPY, ComposeOptions, Piece
from tests.media import SceneSpec, make_scene_video

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg/ffprobe not installed"),
]

WIDTH, HEIGHT, OUT_FPS = 640, 360, 30
LOUD_S = 5.0
"""Sources with audio carry a loud tone for their first ``LOUD_S`` seconds and silence after."""
TONES = (1000.0, 1500.0)
"""The clips' tones (sources a and c); the music is a 220 + 330 Hz chord, far from both."""
MUSIC_HZ = (220.0, 330.0)


def _ffmpeg(*args: str) -> None:
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-1500:]


def _source(path: Path, picture: str, size: str, fps: int, tone: float | None, seconds: float = 10.0) -> Path:
    """An H.264 MP4 of lavfi ``picture``; with ``tone``: that sine (-15 dBFS RMS) for ``LOUD_S`` s, then silence."""
    args = ["-f", "lavfi", "-i", f"{picture}=size={size}:rate={fps}:duration={seconds}"]
    if tone is not None:
        args += ["-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=44100:duration={seconds}",
                 "-af", f"volume='if(lt(t,{LOUD_S}),2,0)':eval=frame"]  # fmt: skip
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(fps), "-pix_fmt", "yuv420p"]
    if tone is not None:
        args += ["-c:a", "aac", "-b:a", "96k"]
    _ffmpeg(*args, str(path))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compose")
    music = folder / "music.m4a"
    # 6 s: shorter than the compilation, so it must loop
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency={MUSIC_HZ[0]}:duration=6", "-f", "lavfi", "-i",
            f"sine=frequency={MUSIC_HZ[1]}:duration=6", "-filter_complex", "amix=inputs=2:normalize=0,volume=0.5",
            "-c:a", "aac", str(music))  # fmt: skip
    return {
        "a": _source(folder / "a.mp4", "testsrc2", "320x240", 25, TONES[0]),
        "b": _source(folder / "b.mp4", "smptebars", "640x360", 30, None),
        "c": _source(folder / "c.mp4", "testsrc", "480x480", 24, TONES[1]),
        "music": music,
        "copy_source": make_scene_video(folder / "copy.mp4", [SceneSpec(12.0, "testsrc2")], size="320x240", fps=25),
    }


def _ffprobe(path: Path, *args: str) -> dict:
    result = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", *args, str(path)],
                            capture_output=True, check=True)
    return json.loads(result.stdout)


def _frame(path: Path, at_s: float, scale: bool) -> np.ndarray:
    """The frame shown at ``at_s`` as RGB at the output size (``scale``: letterboxed as compose does)."""
    graph = (f"scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=decrease,"
             f"pad={WIDTH}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1") if scale else "null"
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{at_s:.4f}", "-i", str(path),
                             "-frames:v", "1", "-vf", graph, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                            capture_output=True, check=True)  # fmt: skip
    return np.frombuffer(result.stdout, np.uint8).reshape(HEIGHT, WIDTH, 3)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def _band_db(path: Path, windows: list[tuple[float, float]], freqs: tuple[float, ...]) -> list[float]:
    """Power (dB) of the output's audio at ``freqs`` (±5 Hz) per window: the music alone, whatever the clips
    play at their own tones."""
    rate = 48000
    pcm = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar",
                          str(rate), "-f", "f32le", "-"], capture_output=True, check=True).stdout  # fmt: skip
    samples = np.frombuffer(pcm, np.float32)
    levels = []
    for start, end in windows:
        chunk = samples[int(start * rate):int(end * rate)]
        spectrum = np.abs(np.fft.rfft(chunk * np.hanning(len(chunk)))) ** 2
        bins = np.fft.rfftfreq(len(chunk), 1 / rate)
        power = sum(spectrum[np.abs(bins - f) <= 5].sum() for f in freqs)
        levels.append(10 * np.log10(power / len(chunk) + 1e-20))
    return levels


async def test_filter_graph_compilation_of_mixed_sources(media: dict[str, Path], tmp_path: Path) -> None:
    pieces = [
        Piece(media["a"], 1.0, 4.0),  # loud tone
        Piece(media["b"], 2.0, 5.0),  # no audio at all
        Piece(media["c"], 1.0, 4.0),  # loud tone
        Piece(media["a"], 6.0, 9.0),  # the same source, silent here
    ]
    options = ComposeOptions(width=WIDTH, height=HEIGHT, crossfade_s=0.5, title="Best of: the 'tests'", title_s=3.0,
                             music=media["music"])
    seen: list[float] = []

    async def progress(fraction: float) -> None:
        seen.append(fraction)

    result = await compose(pieces, options, tmp_path / "out.mp4", progress=progress)

    assert result.method == FILTER_GRAPH
    assert result.pieces == [(p.start_s, p.end_s) for p in pieces]
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    report = _ffprobe(result.path, "-show_format", "-show_streams")
    video = next(s for s in report["streams"] if s["codec_type"] == "video")
    audio = next(s for s in report["streams"] if s["codec_type"] == "audio")
    assert "mp4" in report["format"]["format_name"]
    assert (video["codec_name"], video["width"], video["height"], video["pix_fmt"]) == ("h264", WIDTH, HEIGHT,
                                                                                         "yuv420p")
    assert (audio["codec_name"], int(audio["sample_rate"]), audio["channels"]) == ("aac", 48000, 2)
    expected = 3.0 + 4 * 3.0 - 3 * 0.5
    assert abs(float(video["duration"]) - expected) <= 1 / OUT_FPS + 1e-3
    assert abs(result.duration_s - expected) <= 1 / OUT_FPS + 1e-3
    assert abs(float(report["format"]["duration"]) - expected) <= 1 / OUT_FPS + 0.03  # audio frames: 21 ms

    # where each piece lies in the output: after the 3 s title, each starts a crossfade before the last ends
    starts = [3.0 + n * (3.0 - 0.5) for n in range(4)]
    for piece, start in zip(pieces, starts, strict=True):
        at_out = round((start + 1.5) * OUT_FPS) / OUT_FPS + 0.001  # a frame time near the middle
        got = _frame(result.path, at_out, scale=False)
        want = _frame(piece.source, piece.start_s + (at_out - start), scale=True)
        assert _psnr(got, want) > 25, f"{piece.source.name} at {at_out:.3f}s"
        others = [p.source for p in pieces if p.source != piece.source]
        assert _psnr(got, _frame(others[0], 2.0, scale=True)) < 20  # not just any picture
    title = _frame(result.path, 1.5, scale=False)
    assert title.mean() < 40 and title.max() > 200  # white letters on black

    # music ducked under the clips' tones: (title 0-3 silent) p0 3-6 loud, p1 5.5-8.5 none, p2 8-11 loud,
    # p3 10.5-13.5 silent; windows keep clear of crossfades and of the compressor's attack and release
    loud = _band_db(result.path, [(3.3, 5.3), (8.7, 10.3)], MUSIC_HZ)
    quiet = _band_db(result.path, [(0.7, 2.7), (6.6, 7.9), (11.6, 13.3)], MUSIC_HZ)
    assert max(loud) < min(quiet) - 6, (loud, quiet)
    assert min(quiet) > -60  # the music really plays, looped past its 6 s
    tones = _band_db(result.path, [(3.3, 5.3), (11.6, 13.3)], (TONES[0],))
    assert tones[0] > tones[1] + 20  # the clip's own tone where it was loud, not where it was silent


def _keyframes(path: Path) -> list[float]:
    """Keyframe times by decoding only keyframes (another way than compose's packet flags)."""
    report = _ffprobe(path, "-select_streams", "v:0", "-skip_frame", "nokey", "-show_entries", "frame=pts_time")
    return sorted(float(f["pts_time"]) for f in report["frames"])


def _packets(path: Path) -> list[tuple[int, bool]]:
    """(size, is keyframe) of each video packet."""
    report = _ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=size,flags")
    return [(int(p["size"]), "K" in p["flags"]) for p in report["packets"]]


async def test_stream_copy_cuts_on_keyframes(media: dict[str, Path], tmp_path: Path) -> None:
    source = media["copy_source"]
    pieces = [Piece(source, 1.3, 2.52), Piece(source, 5.52, 7.32), Piece(source, 8.1, 9.88)]
    began = time.monotonic()
    result = await compose(pieces, ComposeOptions(), tmp_path / "copy.mp4")
    elapsed = time.monotonic() - began

    assert result.method == STREAM_COPY
    keyframes = _keyframes(source)
    assert len(keyframes) >= 10
    for (used_start, used_end), piece in zip(result.pieces, pieces, strict=True):
        assert used_start == pytest.approx(max(k for k in keyframes if k <= piece.start_s), abs=1e-3)
        assert used_start < piece.start_s
        assert used_end == piece.end_s
    report = _ffprobe(result.path, "-show_streams")
    video = next(s for s in report["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert any(s["codec_type"] == "audio" for s in report["streams"])
    used = sum(end - start for start, end in result.pieces)
    assert abs(float(video["duration"]) - used) <= 1 / 25 + 1e-3
    # no re-encode: the output's packets are the source's own from the keyframe on, the same size (keyframes
    # carry the SPS/PPS in-band besides: the concat demuxer's automatic h264_mp4toannexb)
    first = round(result.pieces[0][0] * 25)
    frames = round((result.pieces[0][1] - result.pieces[0][0]) * 25)
    copied = _packets(result.path)[:frames]
    original = _packets(source)[first:first + frames]
    assert [key for _, key in copied] == [key for _, key in original]
    assert copied[0][1] and sum(key for _, key in copied) == 2  # from the keyframe at 1 s, through the one at 2 s
    for (size, key), (source_size, _) in zip(copied, original, strict=True):
        assert source_size <= size <= source_size + 64 if key else size == source_size
    assert elapsed < 30  # a remux; the filter graph path takes far longer (see bench/compile.py)


async def test_sizes_given_equal_to_the_sources_still_copy(media: dict[str, Path], tmp_path: Path) -> None:
    source = media["copy_source"]
    result = await compose([Piece(source, 0.0, 2.0), Piece(source, 4.0, 5.0)],
                           ComposeOptions(width=320, height=240, fps=25), tmp_path / "same.mp4")
    assert result.method == STREAM_COPY
    assert result.pieces == [(0.0, 2.0), (4.0, 5.0)]


async def test_bad_requests(media: dict[str, Path], tmp_path: Path) -> None:
    source = media["copy_source"]
    with pytest.raises(ValueError, match="half of the shortest piece"):
        await compose([Piece(source, 0.0, 3.0), Piece(source, 4.0, 5.0)], ComposeOptions(crossfade_s=0.6),
                      tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="must be after start"):
        await compose([Piece(source, 2.0, 2.0)], ComposeOptions(), tmp_path / "x.mp4")
    with pytest.raises(NotFound, match=r"gone\.mp4 does not exist") as missing:
        await compose([Piece(source, 0.0, 1.0), Piece(tmp_path / "gone.mp4", 0.0, 1.0)], ComposeOptions(),
                      tmp_path / "x.mp4")
    assert "pieces[1].source" in str(missing.value)
    not_music = tmp_path / "notes.m4a"
    not_music.write_text("not audio at all\n" * 50)
    with pytest.raises(Internal, match="ffmpeg failed") as failed:
        await compose([Piece(source, 0.0, 1.0)], ComposeOptions(music=not_music), tmp_path / "x.mp4")
    assert "notes.m4a" in str(failed.value)  # ffmpeg's own words about the input it could not read
    assert not (tmp_path / "x.mp4").exists()
    assert not list(tmp_path.glob(".*partial"))


def _live_ffmpeg_children() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "ffmpeg" and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


async def test_cancel_kills_ffmpeg(media: dict[str, Path], tmp_path: Path) -> None:
    started = asyncio.Event()

    async def progress(fraction: float) -> None:
        started.set()

    # a 1280x720 render of ~30 s: many seconds of work on any machine
    pieces = [Piece(media[name], 0.0, 9.5) for name in ("a", "b", "c")]
    task = asyncio.create_task(compose(pieces, ComposeOptions(width=1280, height=720, crossfade_s=0.5),
                                       tmp_path / "never.mp4", progress=progress))
    await asyncio.wait_for(started.wait(), 60)
    running = _live_ffmpeg_children()
    assert running, "ffmpeg should be rendering"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _live_ffmpeg_children()
    for proc in running:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert not (tmp_path / "never.mp4").exists()
    assert not list(tmp_path.glob(".*partial"))
