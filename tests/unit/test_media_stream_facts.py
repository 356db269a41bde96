"""The PROBE stage's ffprobe gives the decode pass what it needs (stream index, upright size, frame rate, sample
aspect ratio): a pass handed those facts runs no ffprobe of its own and finds what a pass that probes finds."""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from services.media import scenes
from services.media.frames import VideoStream, probe_video_stream
from services.media.probe import VideoStreamFacts, media_info_from_probe, probe, video_stream_facts
from tests.media import make_scene_video


def _report(**video: Any) -> dict[str, Any]:
    stream = {"index": 0, "codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080,
              "r_frame_rate": "30/1", "avg_frame_rate": "30/1", "duration": "10.0", **video}
    return {"format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "10.0"}, "streams": [stream]}


def test_media_info_carries_the_decode_facts() -> None:
    info = media_info_from_probe(_report(index=2, sample_aspect_ratio="4:3"), size_bytes=1)
    assert info.video_stream == VideoStreamFacts(2, 1920, 1080, Fraction(30), Fraction(4, 3))


def test_a_quarter_turned_stream_comes_out_upright() -> None:
    facts = video_stream_facts({"width": 1920, "height": 1080, "r_frame_rate": "30/1", "sample_aspect_ratio": "4:3",
                                "side_data_list": [{"rotation": -90}]})
    assert facts is not None and (facts.width, facts.height, facts.sar) == (1080, 1920, Fraction(3, 4))


def test_the_rate_is_ffmpegs_guess_and_absurd_aspect_ratios_are_square() -> None:
    facts = video_stream_facts({"width": 640, "height": 480, "r_frame_rate": "90000/1",
                                "avg_frame_rate": "30000/1001", "sample_aspect_ratio": "0:1"})
    assert facts is not None and (facts.rate, facts.sar) == (Fraction(30000, 1001), Fraction(1))
    assert video_stream_facts({"width": 0, "height": 480}) is None


def test_the_facts_are_a_video_stream() -> None:
    facts = VideoStreamFacts(1, 800, 332, Fraction(24), Fraction(399, 400))
    stream = VideoStream.of(facts)
    assert stream == VideoStream(1, 800, 332, Fraction(24), Fraction(399, 400))
    assert VideoStream.of(stream) is stream
    assert stream.analysis_size == (256, 106)


def test_a_pass_given_the_probes_facts_runs_no_ffprobe_and_finds_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    video = make_scene_video(tmp_path / "cuts.mp4", audio=False)
    info = asyncio.run(probe(video))
    assert info.video_stream is not None
    assert VideoStream.of(info.video_stream) == probe_video_stream(video, "video", threading.Event())
    probed = scenes.analyse_video(video, info.duration_s, tmp_path / "probed")

    def no_ffprobe(*args: object) -> VideoStream:
        raise AssertionError("the pass probed the video again")

    monkeypatch.setattr(scenes, "probe_video_stream", no_ffprobe)
    given = scenes.analyse_video(video, info.duration_s, tmp_path / "given", stream=info.video_stream)
    assert given.scenes == probed.scenes and len(given.scenes) > 1
    assert [[f.time_s for f in frames] for frames in given.keyframes] == \
        [[f.time_s for f in frames] for frames in probed.keyframes]
    assert scenes.detect_scenes(video, info.duration_s, stream=info.video_stream) == probed.scenes
