"""Subtitle parsing, clipping and track choice: pure functions, no media I/O."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.media.probe import SubtitleStream
from services.media.scenes import scenes_from_cuts
from services.media.subtitles import (
    MAX_CUE_CHARS,
    MAX_CUES,
    Cue,
    clean_cue_text,
    clip_cues,
    parse_subtitles,
    pick_text_track,
)
from tests.media import write_srt, write_vtt

SRT_WITH_BOM_AND_TAGS = (
    "\ufeff1\r\n00:00:00,000 --> 00:00:04,000\r\n[barking and roaring]\r\n\r\n"
    "2\r\n00:00:13,000 --> 00:00:16,400\r\n<i>I'm Sinbad the sailor\r\nSo hearty and hale</i>\r\n\r\n"
    "3\r\n00:00:55,440 --> 00:00:58,840\r\n</i>My peaches and cream\r\nMy baby kin</i>\r\n\r\n"
    "4\r\n00:00:58,684 --> 00:01:00,684\r\n<i>Sinbad the sailor!</i>\r\n"
).encode()


def test_srt_with_bom_tags_and_malformed_tag() -> None:
    cues = parse_subtitles(SRT_WITH_BOM_AND_TAGS, filename="p1.en.srt")
    assert [c.text for c in cues] == [
        "[barking and roaring]",
        "I'm Sinbad the sailor So hearty and hale",
        "My peaches and cream My baby kin",
        "Sinbad the sailor!",
    ]
    assert cues[0] == Cue(0.0, 4.0, "[barking and roaring]")
    assert cues[1].start_s == pytest.approx(13.0) and cues[1].end_s == pytest.approx(16.4)


def test_cues_past_the_end_are_dropped_or_clamped() -> None:
    cues = parse_subtitles(SRT_WITH_BOM_AND_TAGS)
    clipped = clip_cues(cues, 60.0)
    assert len(clipped) == 4
    assert clipped[-1].end_s == 60.0
    assert all(0 <= c.start_s < c.end_s <= 60.0 for c in clipped)
    assert [c.text for c in clip_cues(cues, 58.0)][-1] == "My peaches and cream My baby kin"
    assert clip_cues(cues, 58.0)[-1].end_s == 58.0
    assert clip_cues(cues, 0.0) == []


def test_font_bold_ass_overrides_and_an8() -> None:
    srt = (
        "1\n00:00:01,000 --> 00:00:02,500\n"
        '<font color="#ffff00">Yellow</font> <b>bold</b> {\\an8}top <u>under</u>\n\n'
        "2\n00:00:03,000 --> 00:00:04,000\n{\\i1}{\\pos(10,20)}Placed{\\i0} text\n"
    )
    cues = parse_subtitles(srt, fmt="srt")
    assert [c.text for c in cues] == ["Yellow bold top under", "Placed text"]


def test_clean_cue_text() -> None:
    assert clean_cue_text("{\\an8}<i>Hello</i>\\Nworld") == "Hello world"
    assert clean_cue_text("<v Roger>Hi <c.yellow>there</c> &amp; you") == "Hi there & you"
    assert clean_cue_text("line one\n  line two  ") == "line one line two"
    assert clean_cue_text("broken <i") == "broken"
    assert clean_cue_text("I <3 you") == "I <3 you"


def test_empty_cues_dropped_and_sorted_by_start() -> None:
    srt = (
        "1\n00:00:05,000 --> 00:00:06,000\nlater\n\n"
        "2\n00:00:01,000 --> 00:00:02,000\n<i></i>\n\n"
        "3\n00:00:02,000 --> 00:00:03,000\nearlier\n"
    )
    assert [c.text for c in parse_subtitles(srt)] == ["earlier", "later"]


def test_webvtt_header_notes_styles_settings_and_ids() -> None:
    vtt = (
        "WEBVTT - friday\nKind: captions\n\n"
        "NOTE a note\nover two lines\n\n"
        "STYLE\n::cue { color: yellow }\n\n"
        "intro\n00:00:00.000 --> 00:00:00.999  line:80%\nHildy!\n\n"
        "00:01.000 --> 00:01.499 line:80% align:center\n<v Walter>How are <b>you</b>?\n\n"
        "00:00:01.500 --> 00:00:02.999\nTell me, <00:00:02.000>is the lord\nof the universe in?\n"
    )
    cues = parse_subtitles(vtt)
    assert [c.text for c in cues] == ["Hildy!", "How are you?", "Tell me, is the lord of the universe in?"]
    assert cues[1].start_s == pytest.approx(1.0) and cues[1].end_s == pytest.approx(1.499)


def test_format_from_fmt_filename_or_content(tmp_path) -> None:
    cues = [Cue(1.0, 2.0, "one"), Cue(3.0, 4.5, "two words")]
    srt = write_srt(cues, tmp_path / "a.srt").read_bytes()
    vtt = write_vtt(cues, tmp_path / "a.vtt").read_bytes()
    for data, fmt, name in [(srt, "srt", None), (srt, None, "x.SRT"), (srt, "subrip", None),
                            (vtt, "webvtt", None), (vtt, None, "x.vtt"), (vtt, None, None)]:  # fmt: skip
        assert parse_subtitles(data, fmt=fmt, filename=name) == cues


def test_latin1_and_cp1252_fallback() -> None:
    srt = "1\n00:00:01,000 --> 00:00:02,000\nCaf\u00e9 cr\u00e8me \u2014 d\u00e9j\u00e0 vu\n"
    cues = parse_subtitles(srt.encode("cp1252"))
    assert cues[0].text == "Caf\u00e9 cr\u00e8me \u2014 d\u00e9j\u00e0 vu"
    latin1 = "1\n00:00:01,000 --> 00:00:02,000\nNi\u00f1o \u00fcber\n".encode("latin-1")
    assert parse_subtitles(latin1)[0].text == "Ni\u00f1o \u00fcber"


def test_utf16_with_bom() -> None:
    srt = "1\n00:00:01,000 --> 00:00:02,000\nhello\n"
    assert parse_subtitles(srt.encode("utf-16"))[0].text == "hello"


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", None),
        (b"   \n\n", "srt"),
        (b"this is just some prose, not subtitles\nat all\n", None),
        (b"this is just some prose, not subtitles\n", "srt"),
        (b"WEBVTT\n\nno cues here\n", "vtt"),
        (bytes(range(256)) * 4, None),
        (b"1\n00:00:01,000 --> 00:00:02,000\nhi\n", "docx"),
    ],
)
def test_garbage_is_invalid_argument_on_field(data: bytes, fmt: str | None) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_subtitles(data, fmt=fmt, field="sidecar_subtitles")
    assert caught.value.reason == "INVALID_SUBTITLES"
    assert [v.field for v in caught.value.field_violations] == ["sidecar_subtitles"]
    with pytest.raises(InvalidArgument) as caught:
        parse_subtitles(data, fmt=fmt, field="upload.subtitles")
    assert caught.value.field_violations[0].field == "upload.subtitles"


def test_pick_text_track_skips_image_tracks() -> None:
    pgs = SubtitleStream(1, "hdmv_pgs_subtitle", "eng", is_text=False)
    vobsub = SubtitleStream(2, "dvd_subtitle", "eng", is_text=False)
    assert pick_text_track([pgs, vobsub]) is None
    assert pick_text_track([]) is None
    french = SubtitleStream(3, "subrip", "fre", is_text=True)
    assert pick_text_track([pgs, french]) == french  # a text track beats no track


def test_pick_text_track_prefers_language_then_full_then_default() -> None:
    forced_en = SubtitleStream(2, "subrip", "eng", is_text=True, is_forced=True)
    full_en = SubtitleStream(3, "ass", "en-US", is_text=True)
    default_en = SubtitleStream(4, "mov_text", "eng", is_text=True, is_default=True)
    german = SubtitleStream(1, "subrip", "ger", is_text=True, is_default=True)
    unknown = SubtitleStream(5, "webvtt", "", is_text=True)
    assert pick_text_track([german, forced_en, full_en, default_en, unknown]) == default_en
    assert pick_text_track([german, forced_en, full_en]) == full_en
    assert pick_text_track([german, unknown]) == unknown
    assert pick_text_track([german, unknown], prefer_language="de") == german
    assert pick_text_track([german, unknown], prefer_language="deu") == german


def test_scenes_from_cuts_cover_the_duration() -> None:
    # Pure scene-boundary arithmetic lives here with the other pure media helpers.
    scenes = scenes_from_cuts([8.0, 15.0, 0.0, -1.0, 15.0, 35.9, 40.0], 36.0, min_scene_s=0.6)
    assert [(s.start_s, s.end_s) for s in scenes] == [(0.0, 8.0), (8.0, 15.0), (15.0, 36.0)]
    assert [s.index for s in scenes] == [0, 1, 2]
    assert [(s.start_s, s.end_s) for s in scenes_from_cuts([], 5.0)] == [(0.0, 5.0)]
    assert len(scenes_from_cuts([0.2], 0.5, 0.6)) == 1


def test_sloppy_srt_is_read_as_players_read_it() -> None:
    srt = (
        "1\r\n0:00:01.000 --> 0:00:02,500 X1:10 X2:20\r\nno blank line after me\r\n"  # 1-digit hours, dot
        "2\r\n00:00:03,000-->00:00:04,000\r\nfirst line\r\n\r\nafter a blank line\r\n\r\n\r\n"
        "3\n00:05,000 --> 00:06,5\ntrailing id 42\n"
    )
    assert parse_subtitles(srt, "srt") == [
        Cue(1.0, 2.5, "no blank line after me"),
        Cue(3.0, 4.0, "first line after a blank line"),
        Cue(5.0, 6.5, "trailing id 42"),
    ]


def test_vtt_cue_ends_at_a_blank_line_and_blocks_between_are_skipped() -> None:
    vtt = (
        "\ufeffWEBVTT\n\nREGION\nid:fred\n\n00:01.000 --> 00:02.000 region:fred\nHi\n\nstray text\n\n"
        "NOTE 00:09.000 is not a cue\n\nSTYLE\n::cue(b) { color: red }\n\n"
        "id-2\n00:03.000 --> 00:04.000\n<b>There</b>\n"
    )
    assert parse_subtitles(vtt) == [Cue(1.0, 2.0, "Hi"), Cue(3.0, 4.0, "There")]


def test_cue_count_and_cue_length_are_bounded() -> None:
    many = "0:0:0,000 --> 0:0:1,000\nx\n\n" * (MAX_CUES + 1)
    with pytest.raises(InvalidArgument) as caught:
        parse_subtitles(many, "srt")
    assert caught.value.reason == "INVALID_SUBTITLES"
    long_cue = ("1\n00:00:01,000 --> 00:00:02,000\n" + "w " * MAX_CUE_CHARS
                + "\n\n2\n00:00:03,000 --> 00:00:04,000\nok\n")
    assert parse_subtitles(long_cue, "srt") == [Cue(3.0, 4.0, "ok")]  # markup soup or a pasted transcript
