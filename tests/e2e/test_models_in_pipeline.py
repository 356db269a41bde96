"""CLIP and Whisper in the pipeline, through the real mesh (random weights, see conftest.MODEL_ENV):
keyframes get visual vectors, a video without subtitles is transcribed by Whisper, a video with
subtitles skips Whisper, and degraded models are reported but never change ranking."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import grpc
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.pipeline.v1 import pipeline_service_pb2 as pipeline_pb
from clipmind.search.v1 import search_service_pb2 as search_pb
from clipmind.search.v1 import search_service_pb2_grpc as search_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.clients import grpc_search, grpc_upload, wait_ready, watch_job

pytestmark = pytest.mark.e2e


def _query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def spoken_video(tmp_path_factory: pytest.TempPathFactory, channel: grpc.Channel) -> dict:
    """8 s of espeak-ng speech over two colour shots, no subtitles at all."""
    tmp = tmp_path_factory.mktemp("speech")
    wav = tmp / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quarterly report shows strong growth in every region."],
                   check=True)
    video = tmp / "spoken.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4",
         "-f", "lavfi", "-i", "smptebars=size=320x240:rate=25:duration=4", "-i", str(wav),
         "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v];[2:a]apad=whole_dur=8[a]",
         "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
         "-t", "8", "-movflags", "+faststart", str(video)],
        check=True,
    )
    uploaded = grpc_upload(channel, video)
    events = watch_job(channel, uploaded.job)
    return {"video": wait_ready(channel, uploaded.name), "events": events}


def _stage_messages(events: list[pipeline_pb.JobEvent], stage: str) -> list[str]:
    return [f"{pipeline_pb.StageState.Name(e.stage_state)}: {e.message}" for e in events
            if pipeline_pb.Stage.Name(e.stage) == f"STAGE_{stage}"]


def test_video_without_subtitles_is_transcribed_by_whisper(spoken_video: dict, endpoints) -> None:  # type: ignore[no-untyped-def]
    video: ingest_pb.Video = spoken_video["video"]
    assert video.state == ingest_pb.Video.STATE_READY, video.failure_reason
    transcript = _stage_messages(spoken_video["events"], "TRANSCRIPT")
    assert any("speech_recognition" in m for m in transcript), transcript
    assert video.transcript_source == ingest_pb.TRANSCRIPT_SOURCE_SPEECH_RECOGNITION
    video_id = video.name.removeprefix("videos/")
    rows = _query(endpoints.database_url,
                  "SELECT start_s, end_s, source FROM search.transcript_segments WHERE video_id = $1 ORDER BY idx",
                  video_id)
    assert rows, "whisper produced no stored segments"
    starts = [r["start_s"] for r in rows]
    assert starts == sorted(starts)
    for r in rows:  # timing, not words: random weights
        assert 0 <= r["start_s"] < r["end_s"] <= video.duration_seconds + 1e-6
        assert r["source"] == "SPEECH_RECOGNITION"


def test_video_with_subtitles_skips_whisper(processed_video: dict) -> None:
    messages = _stage_messages(processed_video["events"], "TRANSCRIPT")
    assert any("subtitle_track" in m for m in messages)
    assert not any("speech" in m.lower() for m in messages), messages


def test_keyframes_get_visual_vectors_with_their_model(processed_video: dict, endpoints) -> None:  # type: ignore[no-untyped-def]
    video_id = processed_video["video"]["name"].removeprefix("videos/")
    rows = _query(endpoints.database_url,
                  "SELECT v.model, vector_dims(v.embedding) AS dims, c.idx FROM search.visual_vectors v "
                  "JOIN search.keyframes k ON k.id = v.id JOIN search.clips c ON c.id = k.clip_id "
                  "WHERE v.video_id = $1 ORDER BY c.idx, k.idx", video_id)
    assert sorted({r["idx"] for r in rows}) == list(range(processed_video["final"].scene_count))  # every scene's
    assert {r["dims"] for r in rows} == {512}
    assert {r["model"] for r in rows} == {"clip/ViT-B-32@random-seed0"}
    models = _query(endpoints.database_url, "SELECT transcript_model, visual_model FROM ingest.videos WHERE id = $1",
                    video_id)[0]
    assert models["transcript_model"] == "sbert/all-MiniLM-L6-v2"
    assert models["visual_model"] == "clip/ViT-B-32@random-seed0"
    embed = _stage_messages(processed_video["events"], "EMBED")
    assert any("visual vectors (clip/ViT-B-32@random-seed0)" in m for m in embed), embed


def test_random_weights_never_rank(processed_video: dict, channel: grpc.Channel) -> None:
    results = grpc_search(channel, "a dog jumping into the water", page_size=5).results
    assert results and all(r.visual_score == 0.0 for r in results)
    assert all(search_pb.SIGNAL_VISUAL not in r.matched_signals for r in results)
    # The same ranking and scores as a search that asks for the transcript signals only (default weights).
    without = grpc_search(channel, "a dog jumping into the water", page_size=5,
                          weights=search_pb.ModalityWeights(transcript=0.4, lexical=0.5)).results
    assert [(r.clip.name, round(r.score, 5)) for r in results] == [(r.clip.name, round(r.score, 5)) for r in without]


def test_similar_clips_use_visual_vectors(processed_video: dict, channel: grpc.Channel) -> None:
    hit = grpc_search(channel, "a dog jumping into the water", page_size=1).results[0]
    similar = search_grpc.SearchServiceStub(channel).FindSimilarClips(
        search_pb.FindSimilarClipsRequest(name=hit.clip.name, page_size=3), timeout=30).results
    assert similar and hit.clip.name not in [r.clip.name for r in similar]
    scores = [r.score for r in similar]
    assert scores == sorted(scores, reverse=True)


def test_health_reports_models_and_backend(endpoints) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(endpoints.grpc["search"]) as ch:
        health = health_pb2_grpc.HealthStub(ch)

        def state(name: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

        serving = health_pb2.HealthCheckResponse.SERVING
        for model in ("clip_image", "clip_text", "sbert", "whisper"):
            assert state(f"clipmind.model.{model}") == serving, model
        assert state("clipmind.inference.triton") == serving
        assert state("clipmind.inference.torch") == health_pb2.HealthCheckResponse.NOT_SERVING


