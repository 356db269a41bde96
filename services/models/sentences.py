"""Timed words → sentence segments: what speech recognition stores as a transcript (the seed: "segment by
sentence").

Whisper's own segments follow its 30 s decoding windows and voice-activity chunks, not sentences: one holds
the end of a sentence and the start of the next (a search hit then points at both), another runs on for
twenty seconds. Its word timestamps say better where each sentence starts and ends, so segments are rebuilt
from the words: a sentence ends where one of the recogniser's segments ends (it places them at phrase breaks,
but also runs one over a full stop), at a word ending with terminal punctuation (not an abbreviation like
"Mr."), at a pause of ``pause_s`` or more (speech without punctuation, e.g. a list read out), or, past ``max_s``,
at its last comma (else at the word that passed it), so one segment never blurs a long stretch. A word or
two before a pause that the next, lower-case, word continues ("The" … "spacecraft reached orbit") is that
sentence's opening, mistimed at the edge of a decoding window: it joins the sentence at its time.

Written here rather than taken from a library: the sentence splitters on PyPI (nltk's punkt, pysbd, spaCy)
split text, not timed words, need language data, and do not know pauses; the rule above is a dozen lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PAUSE_S = 1.0
MAX_SENTENCE_S = 15.0
DANGLING_WORDS = 2

_TERMINAL = re.compile(r"[.!?…。！？]['\"”’)\]]*$")
_COMMA = re.compile(r"[,;:、，；：]['\"”’)\]]*$")
# Words whose full stop does not end a sentence (English titles and the like; lower-cased, without the dot).
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no"})


@dataclass(frozen=True)
class Word:
    start_s: float
    end_s: float
    text: str  # as the recogniser spells it, with its leading space where the language uses spaces
    opens_segment: bool = False  # the first word of one of the recogniser's own segments


def _ends_sentence(text: str) -> bool:
    word = text.strip()
    if not _TERMINAL.search(word):
        return False
    bare = word.rstrip("'\"”’)]").rstrip(".").lower()
    return not (word.endswith(".") and bare in _ABBREVIATIONS)


def _dangling(fragment: list[Word], following: Word) -> bool:
    """A fragment of at most ``DANGLING_WORDS`` words without an end, followed after a pause by a lower-case
    word, is the start of the next sentence: "The" … "spacecraft reached orbit". Whisper times such a
    fragment at the end of its decoding window, seconds before the sentence is spoken, so it joins the
    sentence and takes its time."""
    text = following.text.strip()
    return len(fragment) <= DANGLING_WORDS and text[:1].islower() and not _COMMA.search(fragment[-1].text.strip())


def _segment(words: list[Word]) -> tuple[float, float, str]:
    text = " ".join("".join(w.text for w in words).split())
    return words[0].start_s, max(words[-1].end_s, words[0].start_s), text


def sentences(
    words: Iterable[Word], *, pause_s: float = PAUSE_S, max_s: float = MAX_SENTENCE_S
) -> list[tuple[float, float, str]]:
    """Sentence segments ``(start_s, end_s, text)`` of ``words`` (in time order); empty words are skipped."""
    out: list[tuple[float, float, str]] = []
    current: list[Word] = []
    for word in words:
        if not word.text.strip():
            continue
        if current and word.start_s - current[-1].end_s >= pause_s:
            if _dangling(current, word):  # the opening of this very sentence, timed before the pause
                current = [Word(word.start_s, word.start_s, w.text) for w in current]
            else:
                out.append(_segment(current))
                current = []
        elif current and word.opens_segment and not _dangling(current, word):
            out.append(_segment(current))
            current = []
        current.append(word)
        if _ends_sentence(word.text):
            out.append(_segment(current))
            current = []
        elif current[-1].end_s - current[0].start_s > max_s and len(current) > 1:
            cut = max((i for i, w in enumerate(current[:-1]) if _COMMA.search(w.text.strip())), default=None)
            if cut is None:
                out.append(_segment(current))
                current = []
            else:
                out.append(_segment(current[: cut + 1]))
                current = current[cut + 1 :]
    if current:
        out.append(_segment(current))
    return [segment for segment in out if segment[2]]
