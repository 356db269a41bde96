"""Planning a compilation (services.media.compose_plan) without running ffmpeg: when stream copy applies, what a
request may ask, the output's size, rate and length, and the filter graph and concat list it writes."""

from __future__ import annotations

import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from services.media.compose_plan import (
    DEFAULT_FPS,
    DEFAULT_SIZE,
    ComposeOptions,
    Piece,
    SourceParams,
    _escape,
    check_request,
    concat_list,
    copy_blockers,
    filter_graph,
    keyframe_at_or_before,
    needs_render,
    output_duration,
    render_plan,
)

A, B, C = Path("/media/a.mp4"), Path("/media/b.mp4"), Path("/media/c.mp4")
H264 = SourceParams(duration_s=60.0, video_index=0, video_codec="h264", width=1280, height=720, pix_fmt="yuv420p",
                    rate=Fraction(30), video_profile="High", video_extradata="SHA256:aa", audio_codec="aac",
                    sample_rate=48000, channels=2, audio_profile="LC", audio_extradata="SHA256:bb")


def _probes(**changes_of_b: object) -> dict[Path, SourceParams]:
    return {A: H264, B: replace(H264, **changes_of_b)}  # type: ignore[arg-type]


PIECES = [Piece(A, 1.0, 4.0), Piece(B, 10.0, 12.0), Piece(A, 20.0, 23.5)]


def test_same_parameters_and_no_options_copy() -> None:
    assert not needs_render(_probes(), PIECES, ComposeOptions())
    assert not needs_render(_probes(), PIECES, ComposeOptions(width=1280, height=720, fps=30))
    # both without audio is as good as both with the same audio
    silent = replace(H264, audio_codec="", sample_rate=0, channels=0, audio_profile="", audio_extradata="")
    assert not needs_render({A: silent, B: silent}, PIECES, ComposeOptions())


@pytest.mark.parametrize(
    "change",
    [
        {"video_codec": "hevc"}, {"width": 1920}, {"height": 1080}, {"pix_fmt": "yuv420p10le"},
        {"rate": Fraction(25)}, {"sar": Fraction(4, 3)}, {"rotation": 90}, {"video_profile": "Main"},
        {"video_extradata": "SHA256:cc"}, {"audio_codec": ""}, {"audio_codec": "mp3"}, {"sample_rate": 44100},
        {"channels": 1},
    ],
)  # fmt: skip
def test_any_difference_between_sources_renders(change: dict[str, object]) -> None:
    assert needs_render(_probes(**change), PIECES, ComposeOptions())
    assert copy_blockers(_probes(**change), PIECES, ComposeOptions()) == ["sources differ in codec parameters"]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (ComposeOptions(crossfade_s=0.5), "crossfade"),
        (ComposeOptions(title="Best of"), "title card"),
        (ComposeOptions(music=Path("/media/song.mp3")), "music"),
        (ComposeOptions(fade_in_s=1.0), "fades"),
        (ComposeOptions(fade_out_s=1.0), "fades"),
        (ComposeOptions(width=640, height=360), "another output size"),
        (ComposeOptions(fps=25), "another frame rate"),
    ],
)
def test_options_that_need_new_pictures_or_sound_render(options: ComposeOptions, reason: str) -> None:
    assert needs_render(_probes(), PIECES, options)
    assert copy_blockers(_probes(), PIECES, options) == [reason]


def test_codecs_an_mp4_cannot_carry_render() -> None:
    vp8 = replace(H264, video_codec="vp8", audio_codec="vorbis")
    assert needs_render({A: vp8, B: vp8}, PIECES, ComposeOptions())


def test_keyframe_at_or_before() -> None:
    keyframes = [0.0, 2.0, 4.0, 6.0]
    assert keyframe_at_or_before(keyframes, 3.9) == 2.0
    assert keyframe_at_or_before(keyframes, 4.0) == 4.0
    assert keyframe_at_or_before(keyframes, 3.9999) == 4.0  # float slack: "at" a keyframe
    assert keyframe_at_or_before(keyframes, 100.0) == 6.0
    assert keyframe_at_or_before([0.5, 1.5], 0.2) == 0.5  # nothing before: the first


def test_bad_requests_are_value_errors() -> None:
    probes = _probes()
    with pytest.raises(ValueError, match="at least one piece"):
        check_request([], probes, ComposeOptions())
    with pytest.raises(ValueError, match=r"pieces\[1\]: end .* must be after start"):
        check_request([Piece(A, 0, 1), Piece(A, 5, 5)], probes, ComposeOptions())
    with pytest.raises(ValueError, match="negative"):
        check_request([Piece(A, -1, 1)], probes, ComposeOptions())
    with pytest.raises(ValueError, match="past the end"):
        check_request([Piece(A, 50, 61)], probes, ComposeOptions())
    with pytest.raises(ValueError, match=r"half of the shortest piece \(pieces\[1\] is 2s long\)"):
        check_request(PIECES, probes, ComposeOptions(crossfade_s=1.01))
    check_request(PIECES, probes, ComposeOptions(crossfade_s=1.0))  # exactly half is fine
    with pytest.raises(ValueError, match="both"):
        check_request(PIECES, probes, ComposeOptions(width=640))
    with pytest.raises(ValueError, match="even"):
        check_request(PIECES, probes, ComposeOptions(width=641, height=360))
    with pytest.raises(ValueError, match="title_s"):
        check_request(PIECES, probes, ComposeOptions(title="x", title_s=0))
    with pytest.raises(ValueError, match="longer than the compilation"):
        check_request(PIECES, probes, ComposeOptions(fade_in_s=5, fade_out_s=5))


def test_output_duration() -> None:
    assert output_duration(PIECES, ComposeOptions()) == pytest.approx(8.5)
    assert output_duration(PIECES, ComposeOptions(crossfade_s=0.5, title="t", title_s=2)) == pytest.approx(9.5)


def test_render_plan_size_and_rate() -> None:
    plan = render_plan(_probes(), PIECES, ComposeOptions(crossfade_s=0.5))
    assert (plan.width, plan.height, plan.fps) == (1280, 720, Fraction(30))  # the sources' own
    mixed = render_plan(_probes(width=640, height=480, rate=Fraction(25)), PIECES, ComposeOptions(title="t"))
    assert ((mixed.width, mixed.height), mixed.fps) == (DEFAULT_SIZE, DEFAULT_FPS)
    asked = render_plan(_probes(), PIECES, ComposeOptions(width=640, height=360, fps=29.97))
    assert (asked.width, asked.height, asked.fps) == (640, 360, Fraction(30000, 1001))
    assert asked.lengths == [3.0, 2.0, 3.5]
    turned = render_plan({A: replace(H264, rotation=90), B: replace(H264, rotation=270)}, PIECES, ComposeOptions())
    assert (turned.width, turned.height) == (720, 1280)  # ffmpeg turns the picture upright


def test_filter_graph_joins_normalizes_and_mixes() -> None:
    probes = _probes(audio_codec="", sample_rate=0, channels=0)  # b has no audio
    options = ComposeOptions(width=640, height=360, crossfade_s=0.5, title="Hi", music=Path("/media/song.mp3"),
                             fade_in_s=1, fade_out_s=2)
    plan = render_plan(probes, PIECES, options)
    inputs, graph = filter_graph(plan, probes, PIECES, options, title_file=Path("/tmp/t/title.txt"))
    # each piece its own input, opened at its in point; the music last, looped
    assert inputs.count("-i") == 4
    assert inputs[inputs.index("-ss") + 1] == "1.000000"
    assert inputs[-4:] == ["-stream_loop", "-1", "-i", "/media/song.mp3"]
    assert inputs.count("-format_whitelist") == 4  # every input held to the allow-list
    assert graph.count("force_original_aspect_ratio=decrease,pad=640:360") == 3
    assert "anullsrc" in graph.split("[a1]")[0].rsplit(";", 1)[-1]  # silence for b
    # xfade offsets: 3 - 0.5, then + 2 - 0.5
    assert re.findall(r"xfade=transition=fade:duration=0\.500000:offset=([\d.]+)", graph) == ["2.500000",
                                                                                             "4.000000"]
    assert graph.count("acrossfade=d=0.500000") == 2
    assert "drawtext=textfile=/tmp/t/title.txt" in graph
    assert "sidechaincompress" in graph and "asplit=2[clips][key]" in graph and "amix=inputs=2" in graph
    total = output_duration(PIECES, options)  # 2 + 8.5 - 1 = 9.5
    assert f"fade=t=out:st={total - 2:.6f}" in graph and f"afade=t=out:st={total - 2:.6f}" in graph
    assert "loudnorm=I=-16:" in graph and graph.endswith(f"atrim=duration={total:.6f}[aout]")


def test_filter_graph_hard_cuts_and_plain_title_card() -> None:
    options = ComposeOptions(title="Hi")
    plan = render_plan(_probes(), PIECES, options)
    _, graph = filter_graph(plan, _probes(), PIECES, options, title_file=Path("/tmp/t.txt"), drawtext=False)
    assert "concat=n=3:v=1:a=1[vj][aj]" in graph and "xfade" not in graph
    assert "drawtext" not in graph and "color=c=black:s=1280x720" in graph
    assert "sidechaincompress" not in graph and "anullsrc" in graph  # only the title's silence


def test_escape_for_filter_graphs() -> None:
    assert _escape("/tmp/a b/t.txt") == "/tmp/a b/t.txt"
    assert _escape("it's: [x]") == "it\\\\\\'s\\\\: \\[x\\]"


def test_concat_list_quotes_paths() -> None:
    text = concat_list([Piece(Path("/media/it's.mp4"), 1.3, 2.5)], [1.0])
    assert text.splitlines() == ["ffconcat version 1.0", "file '/media/it'\\''s.mp4'", "inpoint 1.000000",
                                 "outpoint 2.500000"]
