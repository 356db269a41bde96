"""One generated video from upload to search through the real mesh: REST via Envoy and gRPC.

The video has four visually distinct shots with hard cuts at known times and an embedded subtitle track
whose lines differ in meaning per shot; queries paraphrase them (none reuses the subtitle's words).
"""

from __future__ import annotations

import grpc
import httpx
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.pipeline.v1 import pipeline_service_pb2 as pipeline_pb

from services.media.subtitles import Cue
from tests.e2e.clients import grpc_search, rest_search
from tests.media import SceneSpec, cut_times

pytestmark = pytest.mark.e2e

SCENES = (
    SceneSpec(11.0, "testsrc2"),
    SceneSpec(11.0, "mandelbrot"),
    SceneSpec(9.0, "smptebars"),
    SceneSpec(9.0, "color=c=0x1040ff"),
)
CUES = (
    Cue(1.0, 5.0, "The chef slices ripe tomatoes and onions for the pasta sauce."),
    Cue(6.0, 10.0, "Then she stirs the garlic into the hot olive oil."),
    Cue(12.0, 16.0, "Our quarterly revenue grew by twelve percent compared with last year."),
    Cue(17.0, 21.0, "The board approved a larger budget for the sales team."),
    Cue(23.0, 27.0, "The puppy sprinted across the garden and leapt into the swimming pool."),
    Cue(27.5, 30.5, "Water splashed over everyone sitting by the edge."),
    Cue(32.0, 36.0, "Snow fell all night and the mountain road was closed until morning."),
    Cue(36.5, 39.5, "Drivers waited in their cars for the ploughs to arrive."),
)
BOUNDS = [0.0, *cut_times(SCENES), sum(s.duration_s for s in SCENES)]
# (paraphrased query, index of the scene it describes)
QUERIES = (
    ("cooking vegetables in the kitchen", 0),
    ("the company's earnings went up this quarter", 1),
    ("a dog jumping into the water", 2),
    ("a winter storm blocked the highway", 3),
)


def test_upload_over_rest_creates_a_processing_video(processed_video: dict) -> None:
    video = processed_video["video"]
    assert video["name"].startswith("videos/")
    assert video["state"] in ("STATE_PENDING", "STATE_PROCESSING")
    assert video["job"].startswith("jobs/")
    assert video["filename"] == "four-scenes.mp4" and video["contentType"] == "video/mp4"
    assert abs(video["durationSeconds"] - BOUNDS[-1]) < 0.2


def test_watch_job_streams_every_stage_to_completion(processed_video: dict) -> None:
    events: list[pipeline_pb.JobEvent] = processed_video["events"]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    completed = [pipeline_pb.Stage.Name(e.stage) for e in events
                 if e.stage_state == pipeline_pb.STAGE_STATE_COMPLETED]
    assert completed == ["STAGE_PROBE", "STAGE_THUMBNAIL", "STAGE_SCENES", "STAGE_TRANSCRIPT",
                         "STAGE_EMBED", "STAGE_INDEX"]
    assert events[-1].job_state == pipeline_pb.Job.STATE_SUCCEEDED
    assert events[-1].progress == pytest.approx(1.0)
    progress = [e.progress for e in events]
    assert progress == sorted(progress)


def test_video_is_ready_with_scenes_and_transcript(processed_video: dict, rest: httpx.Client) -> None:
    final: ingest_pb.Video = processed_video["final"]
    assert final.state == ingest_pb.Video.STATE_READY, final.failure_reason
    assert final.scene_count == len(SCENES)
    assert final.transcript_source == ingest_pb.TRANSCRIPT_SOURCE_SUBTITLE_TRACK
    thumb = rest.get(final.thumbnail_uri)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG, served through Envoy


@pytest.mark.parametrize(("query", "scene"), QUERIES)
def test_paraphrase_finds_the_right_scene_over_rest_and_grpc(
    processed_video: dict, rest: httpx.Client, channel: grpc.Channel, query: str, scene: int
) -> None:
    video_name = processed_video["video"]["name"]
    body = rest_search(rest, query, filter={"videos": [video_name]}, pageSize=5)
    top = body["results"][0]
    assert top["clip"]["video"] == video_name
    assert abs(top["clip"]["startSeconds"] - BOUNDS[scene]) <= 0.5, top
    assert abs(top["clip"]["endSeconds"] - BOUNDS[scene + 1]) <= 0.5, top
    assert top["clip"]["thumbnailUri"].startswith("http")
    assert body["searchId"]

    over_grpc = grpc_search(channel, query, page_size=5)
    assert over_grpc.results, "no results over gRPC"
    assert over_grpc.results[0].clip.name == top["clip"]["name"]
    assert over_grpc.results[0].score == pytest.approx(top["score"], abs=1e-4)


def test_search_pages_without_repeats(processed_video: dict, channel: grpc.Channel) -> None:
    first = grpc_search(channel, "what happens in this video", page_size=2)
    assert len(first.results) == 2 and first.next_page_token
    second = grpc_search(channel, "what happens in this video", page_size=2, page_token=first.next_page_token)
    names = [r.clip.name for r in (*first.results, *second.results)]
    assert len(names) == len(set(names))
    with pytest.raises(grpc.RpcError) as err:
        grpc_search(channel, "another query", page_size=2, page_token=first.next_page_token)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_clip_and_playback_link(processed_video: dict, rest: httpx.Client, channel: grpc.Channel) -> None:
    hit = grpc_search(channel, "a dog jumping into the water", page_size=1).results[0]
    clip = rest.get(f"/v1/{hit.clip.name}")
    assert clip.status_code == 200
    assert clip.json()["transcript"].startswith("The puppy")
    playback = clip.json()["playbackUri"]
    assert "#t=" in playback
    media = rest.get(playback.split("#")[0], headers={"Range": "bytes=0-99"})
    assert media.status_code == 206 and len(media.content) == 100




def test_a_quoted_phrase_is_found_by_lexical_match_at_its_line(processed_video: dict, rest: httpx.Client) -> None:
    """Exact words in quotes find their line (lexical signal), in either fusion; the stages' times come back in
    the ``Server-Timing`` header through Envoy; the same query again is answered by the query cache."""
    video_name = processed_video["video"]["name"]
    for fusion in ("FUSION_WEIGHTED", "FUSION_RRF"):
        response = rest.post("/v1/clips:search", json={
            "query": '"twelve percent"', "filter": {"videos": [video_name]}, "pageSize": 3, "fusion": fusion})
        assert response.status_code == 200, response.text
        top = response.json()["results"][0]
        assert abs(top["clip"]["startSeconds"] - BOUNDS[1]) <= 0.5, top
        assert top["matchedSignals"][0] == "SIGNAL_LEXICAL" and top["lexicalScore"] == pytest.approx(1.0)
        assert top["matchedText"].startswith("Our quarterly revenue grew by twelve percent")
        assert abs(top["matchStartSeconds"] - 12.0) <= 0.5 and abs(top["matchEndSeconds"] - 16.0) <= 0.5
        stages = {part.split(";")[0].strip() for part in response.headers["server-timing"].split(",")}
        assert {"encode", "transcript", "lexical", "fuse", "enrich", "total"} <= stages, stages
        again = rest.post("/v1/clips:search", json={
            "query": '"Twelve  percent"', "filter": {"videos": [video_name]}, "pageSize": 3, "fusion": fusion})
        stages = {part.split(";")[0].strip() for part in again.headers["server-timing"].split(",")}
        assert "cache" in stages and "encode" not in stages, stages  # the query cache answered (case, spaces)
        assert [(r["clip"]["name"], r["score"]) for r in again.json()["results"]] == [
            (r["clip"]["name"], r["score"]) for r in response.json()["results"]]
    bad = rest.post("/v1/clips:search", json={"query": "x", "fusion": "FUSION_BORDA"})
    assert bad.status_code == 400


def test_a_video_is_browsed_by_its_chapters_and_transcript(processed_video: dict, rest: httpx.Client) -> None:
    video_name = processed_video["video"]["name"]
    chapters = rest.get(f"/v1/{video_name}/clips", params={"pageSize": 2})
    assert chapters.status_code == 200, chapters.text
    first = chapters.json()
    rest_page = rest.get(f"/v1/{video_name}/clips", params={"pageToken": first["nextPageToken"]}).json()
    clips = first["clips"] + rest_page["clips"]
    assert [round(c["startSeconds"]) for c in clips] == [round(b) for b in BOUNDS[:-1]]
    thumbnail = rest.get(clips[0]["thumbnailUri"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"].startswith("image/")
    cues = rest.get(f"/v1/{video_name}/transcriptSegments").json()["transcriptSegments"]
    assert [c["text"] for c in cues] == [c.text for c in CUES]
    assert cues[2]["startSeconds"] == pytest.approx(12.0, abs=0.05)
