"""Speech recognition of a video's audio track, window by window, through the ``Inference`` interface.

The track is decoded as it is needed (``audio_windows``): each call fits its deadline and memory holds one
window instead of the whole track (2 h of 16 kHz float32 would be 460 MB). Windows end at a quiet moment
near their end (``CUT_SEARCH_S``), so a boundary rarely cuts through a word or a short sentence; a sentence
that still spans two windows is two segments, which search's sentence windows join again.

The recogniser's language is detected per window; the video's is the one that produced most text. The
real-time factor (wall time over audio time) is measured as windows complete and reported through
``progress``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from services.inference.ports import WHISPER_SAMPLE_RATE, Inference
from services.media.decode import audio_windows
from services.media.subtitles import Cue

WINDOW_S = 30.0  # Whisper's own context; also bounds each inference call
CUT_SEARCH_S = 5.0  # a window ends at the quietest moment of its last 5 s

Progress = Callable[[float, float], Awaitable[None]]  # (seconds of audio done, real-time factor so far)


@dataclass(frozen=True)
class Heard:
    cues: list[Cue]
    language: str  # "" when nothing was heard
    audio_s: float  # seconds of audio decoded
    wall_s: float  # seconds spent recognising (decode + inference)

    @property
    def real_time_factor(self) -> float:
        return self.wall_s / self.audio_s if self.audio_s > 0 else 0.0


async def recognise(inference: Inference, source: Path, progress: Progress | None = None) -> Heard:
    heard: list[Cue] = []
    spoken: Counter[str] = Counter()  # characters of text per detected language
    offset = 0.0
    started = time.perf_counter()
    windows = audio_windows(source, WHISPER_SAMPLE_RATE, WINDOW_S, cut_search_s=CUT_SEARCH_S)
    try:
        async for samples in windows:
            transcript = await inference.transcribe(samples, WHISPER_SAMPLE_RATE)
            found = [Cue(offset + s.start_s, offset + s.end_s, s.text.strip())
                     for s in transcript.segments if s.text.strip()]
            if found and transcript.language:
                spoken[transcript.language] += sum(len(c.text) for c in found)
            heard += found
            offset += len(samples) / WHISPER_SAMPLE_RATE
            if progress is not None:
                await progress(offset, (time.perf_counter() - started) / offset)
    finally:
        await windows.aclose()
    language = spoken.most_common(1)[0][0] if spoken else ""
    return Heard(heard, language, offset, time.perf_counter() - started)
