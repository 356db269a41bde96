"""Property tests of the parsers and validators that take client input at ingest: whatever they are
given, they answer (a value, or InvalidArgument with a reason and field, never another exception) and
they answer in time linear in the input. Times are CPU seconds of this process, so the bounds hold on a
busy machine; the old parser (pysubs2) took seconds for 80 KB of ``<a`` and hours for 5 MiB."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.ingest.inputs import (
    MAX_DESCRIPTION_CHARS,
    MAX_FILENAME_CHARS,
    MAX_SUBTITLE_BYTES,
    MAX_TITLE_CHARS,
    SidecarInput,
    VideoMeta,
    check_filename,
    check_sidecar,
    check_text,
    check_video_text,
    checked_meta,
)
from services.media.subtitles import MAX_CUE_CHARS, MAX_CUES, Cue, clean_cue_text, parse_subtitles

SMALL = settings(max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LARGE = settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SMALL_INPUT_CPU_S = 0.25
# For 5 MiB, the largest accepted sidecar. The slowest hostile input (330 thousand tiny WebVTT cues) takes about
# 1.5-2 s of CPU on the 2-core CI machine, linear; the quadratic parser this guards against took hours.
LARGE_INPUT_CPU_S = 4.0
FORMATS = st.sampled_from([None, "srt", "vtt", "webvtt", "ass", "ssa"])
HEADER = "1\n00:00:01,000 --> 00:00:02,000\n"
# Pieces that made the old code backtrack or loop, and pieces of real markup.
HOSTILE_PIECES = ["<a", "<", " ", "\t", "</", "<i>", "{\\", "{", "}", "\\N", "&#", "&", "1", ";", "-->",
                  "\n", "\r\n", "00:00:01,000", " --> ", "<00:01.000", ">", "\ufeff", "\x00", "WEBVTT", "NOTE"]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn's result or its InvalidArgument, CPU seconds); any other exception propagates (a failure)."""
    started = time.process_time()
    try:
        result: Any = fn()
    except InvalidArgument as exc:
        result = exc
    return result, time.process_time() - started


def _assert_cues_or_refused(result: Any, field: str = "sidecar_subtitles") -> None:
    if isinstance(result, InvalidArgument):
        assert result.reason == "INVALID_SUBTITLES", result
        assert [v.field for v in result.field_violations] == [field]
        return
    assert isinstance(result, list) and all(isinstance(c, Cue) for c in result)
    assert len(result) <= MAX_CUES
    assert [c.start_s for c in result] == sorted(c.start_s for c in result)
    for cue in result:
        assert 0 <= cue.start_s < cue.end_s
        assert cue.text and cue.text == cue.text.strip() and "\n" not in cue.text and "\x00" not in cue.text
        assert len(cue.text) <= MAX_CUE_CHARS


def _timed_best(fn: Callable[[], Any], bound_s: float, tries: int = 3) -> tuple[Any, float]:
    """``_timed``, again (up to ``tries`` times) while over ``bound_s``: the least CPU time of the tries. A busy
    machine (cache misses, frequency scaling) can push one run past the bound; a super-linear parser stays far
    past it every time (the old one took hours)."""
    result, cpu = _timed(fn)
    for _ in range(tries - 1):
        if cpu < bound_s:
            break
        result, again = _timed(fn)
        cpu = min(cpu, again)
    return result, cpu


def _five_mib(pattern: str, head: str = HEADER) -> bytes:
    """``head`` and ``pattern`` repeated up to the sidecar limit (5 MiB)."""
    piece = pattern.encode()
    return (head.encode() + piece * (MAX_SUBTITLE_BYTES // len(piece)))[:MAX_SUBTITLE_BYTES]


# -- any input: cues or INVALID_SUBTITLES, fast -----------------------------------------------------------


@SMALL
@given(text=st.text(max_size=2000), fmt=FORMATS)
def test_any_text_parses_or_is_refused(text: str, fmt: str | None) -> None:
    result, cpu = _timed(lambda: parse_subtitles(text, fmt))
    _assert_cues_or_refused(result)
    assert cpu < SMALL_INPUT_CPU_S


@SMALL
@given(data=st.binary(max_size=2000), fmt=FORMATS)
@example(data=b"\xff\xfe" + b"1\x00" * 3 + b"\x00", fmt=None)  # a UTF-16 BOM on an odd length
@example(data=b"\xfe\xff\xd8\x00", fmt="srt")  # a lone UTF-16 surrogate
def test_any_bytes_parse_or_are_refused(data: bytes, fmt: str | None) -> None:
    result, cpu = _timed(lambda: parse_subtitles(data, fmt, field="upload.subtitles"))
    _assert_cues_or_refused(result, "upload.subtitles")
    assert cpu < SMALL_INPUT_CPU_S


@SMALL
@given(pieces=st.lists(st.sampled_from(HOSTILE_PIECES), max_size=400), fmt=FORMATS)
def test_markup_soup_parses_or_is_refused(pieces: list[str], fmt: str | None) -> None:
    text = HEADER + "".join(pieces)
    result, cpu = _timed(lambda: parse_subtitles(text, fmt))
    _assert_cues_or_refused(result)
    assert cpu < SMALL_INPUT_CPU_S


@SMALL
@given(raw=st.text(max_size=3000))
@example(raw="&#" + "1" * 5000)  # html.unescape alone raises ValueError on > 4300 digits
@example(raw="<" + " " * 3000 + "!")  # quadratic for the old tag regex
def test_clean_cue_text_is_one_clean_line(raw: str) -> None:
    words, cpu = _timed(lambda: clean_cue_text(raw))
    assert isinstance(words, str)
    assert words == words.strip() and "\n" not in words and "  " not in words
    assert not any(ch in words for ch in "\x00\x01\x08\x1b\x7f")
    assert cpu < SMALL_INPUT_CPU_S


# -- well-formed files, written sloppily, give back their cues --------------------------------------------

_WORD = st.text(alphabet=st.characters(whitelist_categories=("L", "N"), max_codepoint=0x2FF), min_size=1,
                max_size=8)
_LINE = st.lists(_WORD, min_size=1, max_size=6).map(" ".join)
_CUE = st.tuples(st.integers(0, 36_000_000), st.integers(1, 600_000), st.lists(_LINE, min_size=1, max_size=3))


def _stamp(ms: int, sep: str, short: bool, one_digit_hours: bool) -> str:
    hours, minutes, seconds, millis = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60, ms % 1000
    rest = f"{minutes:02d}:{seconds:02d}{sep}{millis:03d}"
    if short and hours == 0:
        return rest
    return (f"{hours:d}:" if one_digit_hours else f"{hours:02d}:") + rest


@SMALL
@given(
    cues=st.lists(_CUE, min_size=1, max_size=12),
    vtt=st.booleans(),
    sep=st.sampled_from([",", "."]),
    crlf=st.booleans(),
    bom=st.booleans(),
    blank_between=st.booleans(),
    ids=st.booleans(),
    short=st.booleans(),
    one_digit_hours=st.booleans(),
    settings_text=st.sampled_from(["", " line:80%", "  align:center position:10%", " X1:100 X2:200"]),
)
def test_sloppy_srt_and_vtt_give_back_their_cues(
    cues: list[tuple[int, int, list[str]]], vtt: bool, sep: str, crlf: bool, bom: bool, blank_between: bool,
    ids: bool, short: bool, one_digit_hours: bool, settings_text: str,
) -> None:
    blocks = []
    for number, (start, length, lines) in enumerate(cues, 1):
        stamp = (_stamp(start, sep, short, one_digit_hours) + " --> "
                 + _stamp(start + length, sep, short, one_digit_hours) + settings_text)
        cue_id = f"{number}\n" if ids or not vtt else ""
        blocks.append(f"{cue_id}{stamp}\n" + "\n".join(lines) + "\n")
    body = ("\n" if blank_between else "").join(blocks)
    text = ("WEBVTT\nKind: captions\n\nNOTE made up\n\n" if vtt else "") + body
    if crlf:
        text = text.replace("\n", "\r\n")
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()

    parsed = parse_subtitles(data, "vtt" if vtt else "srt")

    expected = []
    for number, (start, length, lines) in enumerate(cues, 1):
        if vtt and not blank_between and not ids and number < len(cues) and lines[-1].isascii() \
                and lines[-1].isdigit():
            lines = lines[:-1]  # with no blank line and no ids, WebVTT cannot tell it from the next cue's id
        if lines:
            expected.append((start / 1000, (start + length) / 1000, " ".join(lines)))
    assert sorted((c.start_s, c.end_s, c.text) for c in parsed) == sorted(expected)
    assert [c.start_s for c in parsed] == sorted(c.start_s for c in parsed)


def test_ass_dialogue_in_format_order() -> None:
    ass = (
        "[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname\nStyle: Default,Arial\n\n"
        "[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
        "Dialogue: 0,0:00:01.50,0:00:03.00,Default,,0,0,0,,{\\i1}Hello{\\i0}, world\\Nagain\n"
        "Comment: 0,0:00:02.00,0:00:04.00,Default,,0,0,0,,not shown\n"
        "Dialogue: 0,0:00:00.00,0:00:01.00,Default,,0,0,0,,first\n"
    )
    assert parse_subtitles(ass) == [Cue(0.0, 1.0, "first"), Cue(1.5, 3.0, "Hello, world again")]
    reordered = "[Events]\nFormat: Start, End, Text\nDialogue: 0:00:02.00,0:00:03.00,a, b\n"
    assert parse_subtitles(reordered, "ssa") == [Cue(2.0, 3.0, "a, b")]


# -- hostile 5 MiB sidecars: answered in well under 2 s -------------------------------------------------------


@pytest.mark.timeout(120)  # the old parser takes hours here: fail in minutes, not at the suite's timeout
@pytest.mark.parametrize(
    ("pattern", "head", "fmt"),
    [
        ("<a", HEADER, "srt"),  # one cue of 2.6 million broken tags: hours for pysubs2
        (HEADER + "<a" * 250_000, "", "srt"),  # ten cues of 500 KB of broken tags, each cleaned
        (HEADER + "<" + " " * 500_000, "", "srt"),
        ("<" + " " * 4095, HEADER, "srt"),  # quadratic for the old tag regex
        ("{\\", HEADER, "srt"),  # unclosed ASS overrides
        ("1", HEADER + "&#", "srt"),  # a numeric entity of 5 million digits
        ("<00:00", "WEBVTT\n\n00:01.000 --> 00:02.000\n", "vtt"),
        ("00:00:01,000 --> 00:00:02,000\n", "", "srt"),  # only timing lines
        ("0:0:0-->0:0:1\na\n", "", "vtt"),  # 330 thousand tiny cues
        ("-->\n", "", "srt"),  # arrows without timings
        ("Format:a\n", "[Events]\n", "ass"),
        (",", "[Events]\nFormat: ", "ass"),  # a Format line of 5 million fields
        ("Dialogue: 0,0:00:00.00,0:00:01.00,,,0,0,0,,a\n", "[Events]\n", "ass"),
    ],
)
def test_hostile_five_mib_sidecars_are_fast(pattern: str, head: str, fmt: str | None) -> None:
    data = _five_mib(pattern, head)
    result, cpu = _timed_best(lambda: parse_subtitles(data, fmt), LARGE_INPUT_CPU_S)
    _assert_cues_or_refused(result)
    assert cpu < LARGE_INPUT_CPU_S, f"{pattern[:20]!r} as {fmt}: {cpu:.2f} s"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("raw", ["<" + " " * 600_000 + "!", "<a" * 300_000, "</" * 300_000, "{\\" * 300_000,
                                 "&#" * 300_000, "<" * 600_000, "<00:00" * 100_000, "<a\n" * 200_000])
def test_cleaning_a_long_hostile_cue_is_linear(raw: str) -> None:
    words, cpu = _timed(lambda: clean_cue_text(raw))
    assert isinstance(words, str) and "\n" not in words
    assert cpu < 0.5, f"{raw[:10]!r}...: {cpu:.2f} s"


@pytest.mark.timeout(60)
def test_80_kb_of_tags_is_milliseconds() -> None:  # 2.6 s with pysubs2
    result, cpu = _timed(lambda: parse_subtitles(HEADER + "<a" * 40_000, "srt"))
    _assert_cues_or_refused(result)
    assert cpu < 0.2


@LARGE
@pytest.mark.timeout(300)
@given(pattern=st.lists(st.sampled_from(HOSTILE_PIECES), min_size=1, max_size=12).map("".join),
       fmt=st.sampled_from([None, "srt", "vtt"]))
def test_any_repeated_hostile_pattern_of_five_mib_is_fast(pattern: str, fmt: str | None) -> None:
    data = _five_mib(pattern)
    result, cpu = _timed_best(lambda: parse_subtitles(data, fmt), LARGE_INPUT_CPU_S)
    _assert_cues_or_refused(result)
    assert cpu < LARGE_INPUT_CPU_S, f"{pattern!r} x {len(data) // max(1, len(pattern.encode()))}: {cpu:.2f} s"


@pytest.mark.timeout(120)
def test_a_hostile_sidecar_is_refused_by_the_ingest_check_fast() -> None:
    for sidecar in (SidecarInput(_five_mib("<a", head=""), filename="x.srt"),  # no cue at all
                    SidecarInput(_five_mib("<a"), format="SRT")):  # one cue of 5 MiB of broken tags
        refused, cpu = _timed(partial(check_sidecar, sidecar))
        assert isinstance(refused, InvalidArgument) and refused.reason == "INVALID_SUBTITLES"
        assert [v.field for v in refused.field_violations] == ["sidecar_subtitles"]
        assert cpu < LARGE_INPUT_CPU_S
    too_big = SidecarInput(b"x" * (MAX_SUBTITLE_BYTES + 1))
    refused, cpu = _timed(lambda: check_sidecar(too_big))
    assert isinstance(refused, InvalidArgument) and cpu < 0.1


# -- request validators ----------------------------------------------------------------------------------------


def _valid_or_refused(result: Any, fields: set[str]) -> None:
    if isinstance(result, InvalidArgument):
        assert result.reason in {"VALUE_TOO_LONG", "INVALID_CHARACTERS", "INVALID_FIELD", "UPLOAD_TOO_LARGE"}
        assert {v.field for v in result.field_violations} <= fields and result.field_violations


@SMALL
@given(name=st.text(max_size=5000))
@example(name="../../etc/passwd")
@example(name="C:\\Users\\me\\Videos\\holiday.mp4")
@example(name="a" * 300 + "/clip.mp4")
@example(name="..")
@example(name="clip\x00.mp4")
def test_filenames_keep_only_a_clean_base_name(name: str) -> None:
    result, cpu = _timed(lambda: check_filename(name, "upload.filename"))
    _valid_or_refused(result, {"upload.filename"})
    if isinstance(result, str):
        assert "/" not in result and "\\" not in result and result not in (".", "..")
        assert len(result) <= MAX_FILENAME_CHARS
        assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in result)
        assert name.replace("\\", "/").rstrip().endswith(result)
    assert cpu < SMALL_INPUT_CPU_S


def test_filename_examples() -> None:
    assert check_filename("../../etc/passwd", "f") == "passwd"
    assert check_filename("C:\\Users\\me\\holiday.mp4", "f") == "holiday.mp4"
    assert check_filename("dir/", "f") == "" and check_filename("..", "f") == ""
    with pytest.raises(InvalidArgument) as err:
        check_filename("a" * (MAX_FILENAME_CHARS + 1), "metadata.filename")
    assert err.value.reason == "VALUE_TOO_LONG" and err.value.field_violations[0].field == "metadata.filename"
    with pytest.raises(InvalidArgument) as err:
        check_filename("clip\x00.mp4", "upload.filename")
    assert err.value.reason == "INVALID_CHARACTERS"


@SMALL
@given(title=st.text(max_size=MAX_TITLE_CHARS + 50), description=st.text(max_size=300),
       long_description=st.booleans())
def test_titles_and_descriptions_are_bounded(title: str, description: str, long_description: bool) -> None:
    if long_description:
        description = description + "d" * MAX_DESCRIPTION_CHARS
    result, cpu = _timed(lambda: check_video_text(title, description, "metadata."))
    _valid_or_refused(result, {"metadata.title", "metadata.description"})
    if result is None:
        assert len(title) <= MAX_TITLE_CHARS and len(description) <= MAX_DESCRIPTION_CHARS
        assert "\x00" not in title + description
    assert cpu < SMALL_INPUT_CPU_S


def test_text_limits_name_the_field() -> None:
    assert check_text("a" * MAX_TITLE_CHARS, "title", MAX_TITLE_CHARS) == "a" * MAX_TITLE_CHARS
    with pytest.raises(InvalidArgument) as err:
        check_video_text("t" * (MAX_TITLE_CHARS + 1), "")
    assert (err.value.reason, err.value.field_violations[0].field) == ("VALUE_TOO_LONG", "title")
    with pytest.raises(InvalidArgument) as err:
        check_video_text("ok", "x" * (MAX_DESCRIPTION_CHARS + 1), "video.")
    assert err.value.field_violations[0].field == "video.description"
    check_video_text("ok", "line one\n\tline two\r\n")  # layout is fine in a description
    with pytest.raises(InvalidArgument):
        check_video_text("two\nlines", "")  # not in a title
    with pytest.raises(InvalidArgument):
        check_text("x" * 100_000_000, "title", MAX_TITLE_CHARS)  # refused on its length, not scanned


@SMALL
@given(
    filename=st.text(max_size=300), content_type=st.text(max_size=300), title=st.text(max_size=600),
    size=st.integers(-(2**63), 2**63 - 1),
)
def test_stream_metadata_is_checked_or_refused(filename: str, content_type: str, title: str, size: int) -> None:
    meta = VideoMeta(filename, content_type, title, "", size)
    result, cpu = _timed(lambda: checked_meta(meta, 10_000_000_000))
    _valid_or_refused(result, {"metadata.filename", "metadata.content_type", "metadata.title",
                               "metadata.size_bytes"})
    if isinstance(result, VideoMeta):
        assert 0 <= result.size_bytes <= 10_000_000_000 and "/" not in result.filename
    assert cpu < SMALL_INPUT_CPU_S


@SMALL
@given(data=st.binary(max_size=3000), fmt=st.sampled_from(["", "SRT", "WEBVTT"]), filename=st.text(max_size=40),
       language=st.text(max_size=40))
def test_sidecar_check_never_fails_otherwise(data: bytes, fmt: str, filename: str, language: str) -> None:
    result, cpu = _timed(lambda: check_sidecar(SidecarInput(data, fmt, filename, language)))
    if isinstance(result, InvalidArgument):
        assert result.field_violations[0].field.startswith("sidecar_subtitles")
    else:
        assert result in ("SRT", "WEBVTT")
    assert cpu < SMALL_INPUT_CPU_S
