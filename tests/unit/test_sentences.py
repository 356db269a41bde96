"""Timed words become sentence segments (services.models.sentences), and audio windows end in quiet."""

from __future__ import annotations

import numpy as np
import pytest

from services.media.decode import quiet_cut
from services.models.sentences import Word, sentences


def _words(*items: tuple[float, float, str]) -> list[Word]:
    return [Word(s, e, t) for s, e, t in items]


def test_sentences_split_at_terminal_punctuation_with_word_times() -> None:
    words = _words((0.0, 0.4, " The"), (0.4, 0.9, " harvest"), (0.9, 1.5, " begins."), (1.7, 2.0, " Our"),
                   (2.0, 2.6, " revenue"), (2.6, 3.1, " grew!"), (3.2, 3.5, " Why?"))
    assert sentences(words) == [(0.0, 1.5, "The harvest begins."), (1.7, 3.1, "Our revenue grew!"),
                                (3.2, 3.5, "Why?")]


def test_abbreviations_do_not_end_a_sentence() -> None:
    words = _words((0.0, 0.3, " Mr."), (0.3, 0.8, " Smith"), (0.8, 1.2, " left."))
    assert sentences(words) == [(0.0, 1.2, "Mr. Smith left.")]


def test_a_pause_ends_a_sentence_without_punctuation() -> None:
    words = _words((0.0, 0.5, " apples"), (0.5, 1.0, " pears"), (2.5, 3.0, " Bread"), (3.0, 3.4, " and"),
                   (3.4, 3.9, " milk"))
    assert sentences(words, pause_s=1.0) == [(0.0, 1.0, "apples pears"), (2.5, 3.9, "Bread and milk")]


def test_a_long_sentence_is_cut_at_its_last_comma() -> None:
    words = [Word(i * 1.0, i * 1.0 + 0.9, f" w{i}" + ("," if i == 10 else "")) for i in range(20)]
    found = sentences(words, max_s=15.0)
    assert found[0] == (0.0, 10.9, " ".join(f"w{i}" for i in range(11)) + ",")
    assert found[1][0] == 11.0
    assert all(end - start <= 15.0 + 1.0 for start, end, _ in found)


def test_a_long_sentence_without_commas_is_cut_where_it_passes_the_limit() -> None:
    words = [Word(i * 1.0, i * 1.0 + 0.9, f" w{i}") for i in range(40)]
    found = sentences(words, max_s=15.0)
    assert len(found) >= 3
    assert [w for _, _, text in found for w in text.split()] == [f"w{i}" for i in range(40)]
    assert all(end - start <= 16.0 for start, end, _ in found)


def test_a_dangling_opening_joins_its_sentence_at_its_time() -> None:
    """Whisper times "The" at its window's end, seconds before "spacecraft reached orbit" is spoken."""
    words = _words((28.7, 32.0, " The board will invest next year."), (32.08, 33.12, " The"),
                   (36.8, 37.5, " spacecraft"), (37.5, 38.0, " reached"), (38.0, 38.6, " orbit."))
    assert sentences(words) == [(28.7, 32.0, "The board will invest next year."),
                                (36.8, 38.6, "The spacecraft reached orbit.")]


def test_a_finished_fragment_before_a_pause_stays_its_own_segment() -> None:
    words = _words((0.0, 0.4, " Hello,"), (3.0, 3.5, " friends"), (3.5, 4.0, " arrived."))
    assert sentences(words) == [(0.0, 0.4, "Hello,"), (3.0, 4.0, "friends arrived.")]


def test_empty_and_blank_words_give_no_segments() -> None:
    assert sentences([]) == []
    assert sentences(_words((0.0, 0.1, " "), (0.1, 0.2, ""))) == []


def test_words_without_spaces_join_as_spoken() -> None:
    words = _words((0.0, 0.3, "今日"), (0.3, 0.6, "は"), (0.6, 1.0, "晴れ。"))
    assert sentences(words) == [(0.0, 1.0, "今日は晴れ。")]


@pytest.mark.parametrize("quiet_at_s", [25.5, 28.0, 29.8])
def test_quiet_cut_ends_a_window_in_its_quietest_moment(quiet_at_s: float) -> None:
    rate = 16_000
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(30 * rate) * 0.3).astype(np.float32)
    start = int(quiet_at_s * rate)
    samples[start:start + rate // 5] *= 0.001  # 200 ms of near silence
    cut = quiet_cut(samples, rate, 5.0)
    assert start <= cut <= start + rate // 5


def test_quiet_cut_searches_only_the_end_and_keeps_short_windows_whole() -> None:
    rate = 16_000
    samples = np.ones(30 * rate, np.float32)
    samples[: rate] = 0.0  # silence at the start is outside the search
    assert quiet_cut(samples, rate, 5.0) >= 25 * rate
    assert quiet_cut(samples[:100], rate, 5.0) == 100
    assert quiet_cut(samples, rate, 0.0) == len(samples)
