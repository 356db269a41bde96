"""Fusion of the signals' ranked lists (``services.search.fusion``) on a small fixed example whose expected
orders are worked out by hand below, the splitting of a lexical query into units, and a moment's sentence window."""

from __future__ import annotations

import uuid

import pytest

from services.search import fusion
from services.search.ports import Match
from services.search.records import Segment
from services.search.retrieval import lexical_units
from services.search.searcher import sentence_window

A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))
VIDEO = uuid.UUID(int=99)


def _list(*scored: tuple[uuid.UUID, float]) -> list[Match]:
    return [Match(clip, VIDEO, 0.0, score) for clip, score in scored]


LISTS = {
    "visual": _list((A, 0.30), (B, 0.25), (C, 0.20)),
    "transcript": _list((B, 0.80), (D, 0.60), (A, 0.40)),
    "lexical": [],  # nothing matched: its weight must not dilute the others
}
WEIGHTS = {"visual": 0.6, "transcript": 0.4, "lexical": 0.4}


def test_weighted_fusion_normalises_each_signal_then_averages() -> None:
    # visual min-max: A 1, B 0.5, C 0; transcript: B 1, D 0.5, A 0; weights 0.6/0.4 (lexical found nothing).
    # A = 0.6*1 + 0.4*0 = 0.6; B = 0.6*0.5 + 0.4*1 = 0.7; C = 0.6*0 = 0; D = 0.4*0.5 = 0.2.
    fused = fusion.weighted(LISTS, WEIGHTS)
    assert [f.clip_id for f in fused] == [B, A, D, C]
    assert [round(f.score, 6) for f in fused] == [0.7, 0.6, 0.2, 0.0]
    assert fused[0].signals == ("transcript", "visual")  # B: 0.4 from transcript, 0.3 from visual
    assert fused[3].signals == ("visual",)


def test_rrf_sums_weight_over_60_plus_rank() -> None:
    # A = 0.6/61 + 0.4/63 = 0.016185; B = 0.6/62 + 0.4/61 = 0.016235; C = 0.6/63 = 0.009524; D = 0.4/62 = 0.006452
    fused = fusion.rrf(LISTS, WEIGHTS)
    assert [f.clip_id for f in fused] == [B, A, C, D]
    assert [round(f.score, 6) for f in fused] == [0.016235, 0.016185, 0.009524, 0.006452]


def test_a_zero_weight_turns_a_signal_off_and_one_signal_keeps_its_order() -> None:
    fused = fusion.weighted(LISTS, {"visual": 0.0, "transcript": 1.0})
    assert [f.clip_id for f in fused] == [B, D, A]
    assert fusion.fuse("rrf", {"lexical": _list((C, 9.0), (A, 1.0))}, WEIGHTS)[0].clip_id == C


def test_normalisation_of_one_or_equal_scores_is_one() -> None:
    assert fusion.normalized([0.3]) == [1.0]
    assert fusion.normalized([0.2, 0.2]) == [1.0, 1.0]
    assert fusion.normalized([]) == []


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError):
        fusion.fuse("borda", LISTS, WEIGHTS)


@pytest.mark.parametrize(("query", "wanted", "excluded"), [
    ("quarterly revenue", ["quarterly", "revenue"], []),
    ('the "quarterly revenue" -draft Zanzibar OR x', ["the", '"quarterly revenue"', "Zanzibar", "x"], ["draft"]),
    ('-"old plan" new', ["new"], ['"old plan"']),
    ('"" - -- and', [], []),
    ('say "unclosed quote', ["say", "unclosed", "quote"], []),
])
def test_lexical_units(query: str, wanted: list[str], excluded: list[str]) -> None:
    assert lexical_units(query) == (wanted, excluded)


def test_lexical_scores_are_used_as_they_are_in_weighted_fusion() -> None:
    # Lexical scores are shares of the query (0..1): a cue with only a common word (0.1) stays low instead of
    # being lifted to 1 by min-max; C's 0.9 is 0.9 * 0.5 / (0.4 + 0.5) of the fused score.
    lists = {"transcript": _list((A, 0.8), (C, 0.2)), "lexical": _list((C, 0.9), (B, 0.1))}
    fused = {f.clip_id: f for f in fusion.weighted(lists, {"transcript": 0.4, "lexical": 0.5})}
    assert fused[C].score == pytest.approx(0.9 * 0.5 / 0.9)
    assert fused[B].score == pytest.approx(0.1 * 0.5 / 0.9)
    assert fused[A].score == pytest.approx(0.4 / 0.9)
    assert fused[C].signals == ("lexical", "transcript") and fused[A].signals == ("transcript",)


def _cues(*spec: tuple[float, float, str]) -> list[Segment]:
    video, clip = uuid.UUID(int=7), uuid.UUID(int=8)
    return [Segment(uuid.UUID(int=100 + i), video, clip, i, a, b, t, "SIDECAR") for i, (a, b, t) in enumerate(spec)]


def test_a_moment_widens_to_the_sentence_its_cue_is_part_of() -> None:
    cues = _cues((10.0, 12.0, "Welcome back."), (12.5, 14.0, "Our quarterly revenue"),
                 (14.2, 16.0, "grew by twelve percent"), (16.1, 18.0, "compared with last year."),
                 (18.5, 20.0, "Next question?"))
    text, start, end = sentence_window(cues, cues[2].id)  # the middle of a sentence over three cues
    assert (text, start, end) == ("Our quarterly revenue grew by twelve percent compared with last year.", 12.5, 18.0)
    assert sentence_window(cues, cues[1].id)[1:] == (12.5, 18.0)
    assert sentence_window(cues, cues[0].id) == ("Welcome back.", 10.0, 12.0)  # a whole sentence stays alone
    assert sentence_window(cues, cues[4].id) == ("Next question?", 18.5, 20.0)


def test_a_moment_does_not_widen_over_pauses_or_unpunctuated_transcripts() -> None:
    paused = _cues((0.0, 2.0, "and then"), (6.0, 8.0, "we left."))  # 4 s of silence between
    assert sentence_window(paused, paused[0].id) == ("and then", 0.0, 2.0)
    flat = _cues((0.0, 2.0, "no punctuation here"), (2.1, 4.0, "nor here"))  # sentences cannot be told
    assert sentence_window(flat, flat[1].id) == ("nor here", 2.1, 4.0)
    # A capital starts a new sentence even where the subtitle dropped the full stop (the real "Friday" cues).
    friday = _cues((1.5, 2.999, "Tell me, is the lord of the universe in?"),
                   (3.0, 4.299, "Yes, he's in - in a bad humor"),
                   (4.3, 6.0, "Somebody must've stolen the crown jewels"))
    assert sentence_window(friday, friday[2].id) == ("Somebody must've stolen the crown jewels", 4.3, 6.0)
    assert sentence_window(friday, friday[1].id) == ("Yes, he's in - in a bad humor", 3.0, 4.299)
    long = _cues(*[(i * 3.0, i * 3.0 + 2.9, f"part {i}") for i in range(7)], (21.0, 22.0, "end."))
    text, start, end = sentence_window(long, long[6].id)  # one 22 s sentence: the window stops at 20 s
    assert (start, end) == (3.0, 22.0) and text.startswith("part 1 ") and text.endswith("end.")
