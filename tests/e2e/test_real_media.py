"""Real media from ../shared/data ingests cleanly and its lines are found by paraphrase; the mesh keeps
videos and search results across a restart."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb

from tests.e2e.clients import grpc_search, grpc_upload, wait_ready, watch_job

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test media not found at {DATA}")


@pytest.fixture(scope="module")
def real_videos(channel: grpc.Channel) -> dict[str, ingest_pb.Video]:
    if not DATA.is_dir():
        pytest.skip(f"real test media not found at {DATA}")
    uploads = {
        "popeye_p1": (DATA / "popeye" / "popeye_p1.mkv", DATA / "popeye" / "popeye_p1.en.srt"),
        "popeye_p2": (DATA / "popeye" / "popeye_p2.mkv", DATA / "popeye" / "popeye_p2.en.srt"),
        "friday": (DATA / "friday" / "friday.mp4", DATA / "friday" / "friday.vtt"),
    }
    videos = {key: grpc_upload(channel, video, sidecar=subs) for key, (video, subs) in uploads.items()}
    # No sidecar: its only subtitle track is PGS (images), which must be skipped, not crash the job.
    videos["popeye_p3_no_sidecar"] = grpc_upload(channel, DATA / "popeye" / "popeye_p3.mkv")
    for video in videos.values():
        watch_job(channel, video.job)
    return {key: wait_ready(channel, v.name) for key, v in videos.items()}


@needs_data
def test_real_media_ingests_cleanly(real_videos: dict[str, ingest_pb.Video]) -> None:
    for key, video in real_videos.items():
        assert video.state == ingest_pb.Video.STATE_READY, (key, video.failure_reason)
        expected = "NONE" if key.endswith("no_sidecar") else "SIDECAR"
        assert ingest_pb.TranscriptSource.Name(video.transcript_source) == f"TRANSCRIPT_SOURCE_{expected}", key
    popeye = real_videos["popeye_p1"]
    assert popeye.video_codec == "hevc" and not popeye.has_audio
    assert popeye.scene_count > 1
    assert real_videos["friday"].scene_count == 1


@needs_data
@pytest.mark.parametrize(
    ("key", "query", "expected_words", "start"),
    [
        # "I live on an island / On the back of a whale" (16.6 s)
        ("popeye_p1", "my home is an island sitting on top of a giant sea creature", "whale", 16.6),
        # "Somebody must've stolen the crown jewels" (4.3 s)
        ("friday", "a thief took the royal treasure", "crown jewels", 4.3),
    ],
)
def test_real_subtitle_line_found_by_paraphrase(
    real_videos: dict[str, ingest_pb.Video], channel: grpc.Channel, key: str, query: str,
    expected_words: str, start: float,
) -> None:
    top = grpc_search(channel, query, page_size=3).results[0]
    assert top.clip.video == real_videos[key].name
    assert expected_words in top.matched_text
    assert top.match_start_seconds == pytest.approx(start, abs=0.05)
    assert top.clip.start_seconds <= top.match_start_seconds < top.clip.end_seconds


@needs_data
def test_popeye_subtitles_are_cleaned_and_clipped(
    real_videos: dict[str, ingest_pb.Video], channel: grpc.Channel
) -> None:
    results = grpc_search(channel, "Sinbad the sailor", page_size=20,
                          filter={"videos": [real_videos["popeye_p1"].name]}).results
    assert results
    for hit in results:
        assert "<" not in hit.matched_text and ">" not in hit.matched_text
        assert hit.match_end_seconds <= real_videos["popeye_p1"].duration_seconds + 1e-6
