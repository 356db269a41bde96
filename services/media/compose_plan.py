"""Planning a compilation: every decision ``services.media.compose`` makes, as pure functions (no ffmpeg run).

The request's types (``Piece``, ``ComposeOptions``, the probed ``SourceParams``, the ``RenderPlan`` and the
``ComposeResult``), its checks (``check_request``: a ``ValueError`` for what cannot be rendered as asked), the
choice between stream copy and one filter graph (``copy_blockers`` / ``needs_render``), the output's size, rate
and length (``render_plan``, ``output_duration``), where a copied piece can start (``keyframe_at_or_before``),
and the text ffmpeg is handed: the ``-filter_complex`` graph with its input arguments (``filter_graph``) and the
concat demuxer's list (``concat_list``).

Kept apart from ``compose`` (which runs ffprobe and ffmpeg and owns the files and processes) so that every
decision is a function of its arguments: unit-tested without ffmpeg, and the runner stays short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from services.media.probe import restricted

DEFAULT_SIZE = (1280, 720)
"""Output size when the options name none and the sources' sizes differ."""
DEFAULT_FPS = Fraction(30)
"""Output frame rate when the options name none and the sources' rates differ."""
SAMPLE_RATE = 48000
"""Every piece's audio is resampled to this (stereo) before it is joined."""
MP4_COPYABLE_VIDEO = frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"})
"""Video codecs an MP4 can carry as they are (stream copy); anything else is re-encoded."""
MP4_COPYABLE_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac"})
"""Audio codecs an MP4 can carry as they are."""
STREAM_COPY = "stream_copy"
FILTER_GRAPH = "filter_graph"
_EPSILON_S = 1e-3  # float slack when a start is compared with a keyframe time


@dataclass(frozen=True)
class Piece:
    """``source`` (a local media file) from ``start_s`` to ``end_s`` seconds of its own timeline."""

    source: Path
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class ComposeOptions:
    """What the compilation looks like. Sizes/rates of 0 mean the sources' own when they all agree (else
    ``DEFAULT_SIZE`` / ``DEFAULT_FPS``); ``crossfade_s`` 0 means hard cuts."""

    width: int = 0
    height: int = 0
    fps: float = 0.0
    crossfade_s: float = 0.0
    title: str = ""
    title_s: float = 3.0
    music: Path | None = None
    music_volume_db: float = -10.0
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0
    loudness_lufs: float = -16.0


@dataclass(frozen=True)
class ComposeResult:
    """The written file, its duration (ffprobe of the output), how it was made (``STREAM_COPY`` or
    ``FILTER_GRAPH``) and the (start, end) used per piece (stream copy: starts moved back to keyframes)."""

    path: Path
    duration_s: float
    method: str
    pieces: list[tuple[float, float]]


@dataclass(frozen=True)
class SourceParams:
    """What ffprobe says about one source: what stream copy needs identical everywhere (``copy_key``) and what
    a render needs (size, rate, whether there is audio)."""

    duration_s: float
    video_index: int
    video_codec: str
    width: int
    height: int
    pix_fmt: str
    rate: Fraction
    sar: Fraction = Fraction(1)
    rotation: int = 0
    video_profile: str = ""
    video_extradata: str = ""
    audio_codec: str = ""
    sample_rate: int = 0
    channels: int = 0
    audio_profile: str = ""
    audio_extradata: str = ""

    @property
    def has_audio(self) -> bool:
        return bool(self.audio_codec)

    @property
    def upright_size(self) -> tuple[int, int]:
        """The size ffmpeg decodes to (autorotate turns a quarter-turned picture) in square pixels, even."""
        width, height = (self.height, self.width) if self.rotation % 180 == 90 else (self.width, self.height)
        sar = 1 / self.sar if self.rotation % 180 == 90 else self.sar
        return _even(float(width * sar)), _even(height)

    @property
    def copy_key(self) -> tuple[object, ...]:
        """Everything two sources must share for their packets to follow each other in one MP4 track."""
        return (self.video_codec, self.video_profile, self.width, self.height, self.pix_fmt, self.rate, self.sar,
                self.rotation, self.video_extradata, self.audio_codec, self.audio_profile, self.sample_rate,
                self.channels, self.audio_extradata)


@dataclass(frozen=True)
class RenderPlan:
    """The checked request: output size and rate and each piece's length (all in the filter-graph path)."""

    width: int
    height: int
    fps: Fraction
    lengths: list[float]

    @property
    def pieces_s(self) -> float:
        return sum(self.lengths)


def _even(size: float) -> int:
    return max(2, 2 * round(size / 2))


# ---------------------------------------------------------------------------------------------- planning


def check_request(pieces: Sequence[Piece], probes: Mapping[Path, SourceParams], options: ComposeOptions) -> None:
    """Raise ``ValueError`` for a request that cannot be rendered as asked (pure)."""
    if not pieces:
        raise ValueError("a compilation needs at least one piece")
    for n, piece in enumerate(pieces):
        if not piece.end_s > piece.start_s:
            raise ValueError(f"pieces[{n}]: end ({piece.end_s:.3f}s) must be after start ({piece.start_s:.3f}s)")
        if piece.start_s < 0:
            raise ValueError(f"pieces[{n}]: start ({piece.start_s:.3f}s) is negative")
        source = probes.get(piece.source)
        if source is not None and piece.end_s > source.duration_s + 1 / float(source.rate):
            raise ValueError(f"pieces[{n}]: end ({piece.end_s:.3f}s) is past the end of its source "
                             f"({source.duration_s:.3f}s)")
    if options.crossfade_s < 0:
        raise ValueError("crossfade_s must not be negative")
    shortest = min(range(len(pieces)), key=lambda n: pieces[n].duration_s)
    if options.crossfade_s > pieces[shortest].duration_s / 2:
        raise ValueError(f"crossfade_s ({options.crossfade_s:g}s) is longer than half of the shortest piece "
                         f"(pieces[{shortest}] is {pieces[shortest].duration_s:g}s long)")
    if (options.width > 0) != (options.height > 0) or options.width < 0 or options.height < 0:
        raise ValueError("width and height must both be set (positive) or both be 0")
    if options.width % 2 or options.height % 2:
        raise ValueError("width and height must be even (H.264 4:2:0)")
    if options.fps < 0:
        raise ValueError("fps must not be negative")
    if options.title and options.title_s <= 0:
        raise ValueError("title_s must be positive when there is a title")
    if options.fade_in_s < 0 or options.fade_out_s < 0:
        raise ValueError("fade_in_s and fade_out_s must not be negative")
    if options.fade_in_s + options.fade_out_s > output_duration(pieces, options):
        raise ValueError("fade_in_s + fade_out_s is longer than the compilation")


def output_duration(pieces: Sequence[Piece], options: ComposeOptions) -> float:
    """title + the pieces - one crossfade per join (the length of the filter-graph output)."""
    title = options.title_s if options.title else 0.0
    return title + sum(p.duration_s for p in pieces) - (len(pieces) - 1) * options.crossfade_s


def copy_blockers(probes: Mapping[Path, SourceParams], pieces: Sequence[Piece], options: ComposeOptions) -> list[str]:
    """Why stream copy cannot make this compilation (empty: it can). Pure."""
    sources = [probes[p.source] for p in pieces]
    reasons = []
    if options.crossfade_s > 0:
        reasons.append("crossfade")
    if options.title:
        reasons.append("title card")
    if options.music is not None:
        reasons.append("music")
    if options.fade_in_s > 0 or options.fade_out_s > 0:
        reasons.append("fades")
    if len({s.copy_key for s in sources}) > 1:
        reasons.append("sources differ in codec parameters")
    first = sources[0]
    if first.video_codec not in MP4_COPYABLE_VIDEO or (first.has_audio and first.audio_codec not in MP4_COPYABLE_AUDIO):
        reasons.append(f"{first.video_codec}/{first.audio_codec or 'no audio'} cannot be copied into MP4")
    if options.width and (options.width, options.height) != (first.width, first.height):
        reasons.append("another output size")
    if options.fps and abs(options.fps - float(first.rate)) > 1e-3:
        reasons.append("another frame rate")
    return reasons


def needs_render(probes: Mapping[Path, SourceParams], pieces: Sequence[Piece], options: ComposeOptions) -> bool:
    """False only when stream copy makes the compilation exactly as asked (``copy_blockers`` is empty). Pure."""
    return bool(copy_blockers(probes, pieces, options))


def render_plan(probes: Mapping[Path, SourceParams], pieces: Sequence[Piece], options: ComposeOptions) -> RenderPlan:
    """Output size and rate for the filter graph: the options', else the sources' own when they agree. Pure."""
    sources = [probes[p.source] for p in pieces]
    if options.width:
        width, height = options.width, options.height
    else:
        sizes = {s.upright_size for s in sources}
        width, height = sizes.pop() if len(sizes) == 1 else DEFAULT_SIZE
    if options.fps:
        fps = _rate_of(options.fps)
    else:
        rates = {s.rate for s in sources}
        fps = rates.pop() if len(rates) == 1 else DEFAULT_FPS
    return RenderPlan(width, height, fps, [p.duration_s for p in pieces])


def _rate_of(fps: float) -> Fraction:
    """A frame rate asked as a float: 29.97 and its kin are the NTSC rates (30000/1001, ...), others as given."""
    for base in (24, 30, 48, 60, 120):
        if abs(fps - base * 1000 / 1001) < 0.005:
            return Fraction(base * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


def keyframe_at_or_before(keyframes: Sequence[float], start_s: float) -> float:
    """The last keyframe time not after ``start_s`` (the first keyframe when there is none before). Pure."""
    before = [k for k in keyframes if k <= start_s + _EPSILON_S]
    return max(before) if before else min(keyframes, default=0.0)


# ---------------------------------------------------------------------------------------------- filter graph


def _escape(value: str) -> str:
    """``value`` as a filter option inside a ``-filter_complex`` graph: escaped for the option parser, then for
    the graph parser (ffmpeg-filters(1), "Notes on filtergraph escaping")."""
    for char in "\\':":
        value = value.replace(char, "\\" + char)
    for char in "\\'[],;":
        value = value.replace(char, "\\" + char)
    return value


def filter_graph(
    plan: RenderPlan, probes: Mapping[Path, SourceParams], pieces: Sequence[Piece], options: ComposeOptions, *,
    title_file: Path | None = None, drawtext: bool = True,
) -> tuple[list[str], str]:
    """The ffmpeg input arguments and the ``-filter_complex`` graph (outputs ``[vout]`` and ``[aout]``). Pure.

    Inputs 0..n-1 are the pieces (opened at their in points), input n the music (looped). ``title_file``
    holds the title text for drawtext (a file, so no character of the title needs escaping)."""
    width, height, fps, cf = plan.width, plan.height, plan.fps, options.crossfade_s
    total = output_duration(pieces, options)
    audio_format = f"aformat=sample_fmts=fltp:sample_rates={SAMPLE_RATE}:channel_layouts=stereo"
    inputs: list[str] = []
    chains: list[str] = []
    for n, piece in enumerate(pieces):
        source = probes[piece.source]
        length = plan.lengths[n]
        inputs += _input(piece.source, "-ss", f"{piece.start_s:.6f}", "-t", f"{length + 1 / float(fps):.6f}")
        # fps first (no scaling of frames it drops); a cloned last frame so a source ending early still fills
        # the piece; then the exact length
        chains.append(
            f"[{n}:{source.video_index}]setpts=PTS-STARTPTS,fps={fps},"
            f"scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p,"
            f"tpad=stop_mode=clone:stop=1,trim=duration={length:.6f},setpts=PTS-STARTPTS[v{n}]")
        if source.has_audio:
            chains.append(f"[{n}:a:0]asetpts=PTS-STARTPTS,aresample={SAMPLE_RATE},{audio_format},"
                          f"apad,atrim=duration={length:.6f},asetpts=PTS-STARTPTS[a{n}]")
        else:
            chains.append(f"anullsrc=r={SAMPLE_RATE}:cl=stereo,{audio_format},atrim=duration={length:.6f}[a{n}]")
    video, audio = "[v0]", "[a0]"
    if cf > 0:
        joined = plan.lengths[0]
        for n in range(1, len(pieces)):
            chains.append(f"{video}[v{n}]xfade=transition=fade:duration={cf:.6f}:offset={joined - cf:.6f}[x{n}]")
            chains.append(f"{audio}[a{n}]acrossfade=d={cf:.6f}:c1=tri:c2=tri[y{n}]")
            video, audio = f"[x{n}]", f"[y{n}]"
            joined += plan.lengths[n] - cf
    elif len(pieces) > 1:
        labels = "".join(f"[v{n}][a{n}]" for n in range(len(pieces)))
        chains.append(f"{labels}concat=n={len(pieces)}:v=1:a=1[vj][aj]")
        video, audio = "[vj]", "[aj]"
    if options.title:
        card = f"color=c=black:s={width}x{height}:r={fps}:d={options.title_s:.6f}"
        if drawtext and title_file is not None:
            font_size = max(12, height // 12)
            card += (f",drawtext=textfile={_escape(str(title_file))}:expansion=none:fontcolor=white:"
                     f"fontsize={font_size}:line_spacing={font_size // 3}:x=(w-text_w)/2:y=(h-text_h)/2")
        # else: this ffmpeg build has no drawtext (no libfreetype): the card stays plain black, the caller's
        # title is not shown, and the timing is the same
        chains.append(f"{card},setsar=1,format=yuv420p[vt]")
        chains.append(f"anullsrc=r={SAMPLE_RATE}:cl=stereo,{audio_format},atrim=duration={options.title_s:.6f}[at]")
        chains.append(f"[vt][at]{video}{audio}concat=n=2:v=1:a=1[vc][ac]")
        video, audio = "[vc]", "[ac]"
    if options.music is not None:
        music = len(pieces)
        inputs += _input(options.music, "-stream_loop", "-1")
        # the clips' audio both plays and keys the compressor: above -40 dBFS (over a quiet room's noise floor,
        # under any speech) the music drops by 7/8 of the excess (speech at -25 dBFS: ~13 dB) within 20 ms and
        # comes back over 400 ms once the clips are quiet
        chains.append(f"{audio}asplit=2[clips][key]")
        chains.append(f"[{music}:a:0]aresample={SAMPLE_RATE},{audio_format},volume={options.music_volume_db:g}dB,"
                      f"atrim=duration={total:.6f},asetpts=PTS-STARTPTS[music]")
        chains.append("[music][key]sidechaincompress=threshold=0.01:ratio=8:attack=20:release=400[ducked]")
        chains.append("[clips][ducked]amix=inputs=2:duration=first:dropout_transition=0:normalize=0[mixed]")
        audio = "[mixed]"
    video_tail, audio_tail = [], []
    if options.fade_in_s > 0:
        video_tail.append(f"fade=t=in:st=0:d={options.fade_in_s:.6f}")
    if options.fade_out_s > 0:
        video_tail.append(f"fade=t=out:st={total - options.fade_out_s:.6f}:d={options.fade_out_s:.6f}")
    chains.append(f"{video}{','.join([*video_tail, 'format=yuv420p'])}[vout]")
    # loudnorm (single pass, dynamic) works at 192 kHz: back to 48 kHz; fades after it, which would otherwise
    # lift them; the exact length last (loudnorm may hand back a few samples more or less)
    audio_tail.append(f"loudnorm=I={options.loudness_lufs:g}:TP=-1.5:LRA=11,aresample={SAMPLE_RATE},{audio_format}")
    if options.fade_in_s > 0:
        audio_tail.append(f"afade=t=in:st=0:d={options.fade_in_s:.6f}")
    if options.fade_out_s > 0:
        audio_tail.append(f"afade=t=out:st={total - options.fade_out_s:.6f}:d={options.fade_out_s:.6f}")
    audio_tail.append(f"apad,atrim=duration={total:.6f}")
    chains.append(f"{audio}{','.join(audio_tail)}[aout]")
    return inputs, ";".join(chains)


def _input(path: Path, *options: str) -> list[str]:
    """``-i path`` with its input ``options``, held to ``probe.restricted``'s allow-lists. Those are per-input
    options in ffmpeg (they reset at each ``-i``), so every input gets its own."""
    return [*restricted(["ffmpeg", *options, "-i", str(path)])[1:]]


def concat_list(pieces: Sequence[Piece], starts: Sequence[float]) -> str:
    """An ffconcat script: each piece's source from its (keyframe) start to its end. Pure."""
    lines = ["ffconcat version 1.0"]
    for piece, start in zip(pieces, starts, strict=True):
        quoted = str(piece.source.absolute()).replace("'", "'\\''")
        lines += [f"file '{quoted}'", f"inpoint {start:.6f}", f"outpoint {piece.end_s:.6f}"]
    return "\n".join(lines) + "\n"
