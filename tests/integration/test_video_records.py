"""Ingest's side of the internal contract, against real PostgreSQL: video records as the pipeline reads and
advances them (IngestInternalService, called in-process as a guarded stub would over gRPC), and what every
change commits to ingest's outbox for the pipeline and search (``services.ingest.relays``).

The database is shared by the test session: every test makes its own videos (fresh uuids) and looks only at
the outbox rows that name them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb
from clipmind.ingest.internal.v1 import ingest_internal_service_pb2 as pb
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2 as pipeline_pb
from clipmind.search.internal.v1 import search_internal_service_pb2 as search_pb
from clipmind.type.v1.priority_pb2 import PRIORITY_STANDARD

from services.common import usage_events
from services.common.convert import timestamp
from services.common.db import Database
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.outbox import OutboxRelay
from services.ingest import relays
from services.ingest.internal_servicer import MAX_REASON_CHARS, IngestInternalServicer
from services.ingest.records import Upload, Video
from services.ingest.store import (
    DELETE_INDEX_TOPIC,
    DELETE_JOBS_TOPIC,
    FACTS_TOPIC,
    SUBMIT_JOB_TOPIC,
    UploadStore,
    VideoStore,
)
from tests.db_setup import ServicerStub, service_db

pytestmark = pytest.mark.integration

OWNER = uuid.uuid4()  # the user whose videos these are: every request about one names them

PROCESSING = pb.PROCESSING_STATE_PROCESSING
READY = pb.PROCESSING_STATE_READY
FAILED = pb.PROCESSING_STATE_FAILED
CANCELLED = pb.PROCESSING_STATE_CANCELLED

# Every fact an update may carry, as (request field, value, video column).
ALL_FACTS: list[tuple[str, Any, str]] = [
    ("duration_seconds", 12.5, "duration_s"), ("width", 1280, "width"), ("height", 720, "height"),
    ("frame_rate", 29.97, "frame_rate"), ("video_codec", "h264", "video_codec"),
    ("audio_codec", "aac", "audio_codec"), ("has_audio", True, "has_audio"),
    ("thumbnail_key", "videos/x/thumbnail.jpg", "thumbnail_key"), ("scene_count", 7, "scene_count"),
    ("transcript_source", "SPEECH_RECOGNITION", "transcript_source"),
    ("transcript_model", "whisper-small", "transcript_model"), ("visual_model", "clip-vit-b32", "visual_model"),
]


@dataclass
class Ingest:
    pool: Database
    videos: VideoStore
    internal: Any  # ServicerStub of IngestInternalServicer

    async def new_video(self, state: str = "PENDING", **fields: Any) -> Video:
        video_id = uuid.uuid4()
        fields.setdefault("owner_id", OWNER)
        await self.videos.create(Video(video_id, f"videos/{video_id}/source.mp4", state, **fields))
        return await self.videos.get(video_id)

    async def update(
        self, video: Video, fence: int, state: pb.ProcessingState.ValueType = pb.PROCESSING_STATE_UNSPECIFIED,
        **fields: Any,
    ) -> pb.UpdateVideoProcessingResponse:
        request = pb.UpdateVideoProcessingRequest(video=f"videos/{video.id}", fence=fence, state=state, **fields)
        response: pb.UpdateVideoProcessingResponse = await self.internal.UpdateVideoProcessing(request)
        return response

    async def rows(self, topic: str, video_id: uuid.UUID) -> list[bytes]:
        """Payloads of the outbox rows of ``topic`` that name the video (its id, or its resource name inside
        an internal request), oldest first."""
        rows = await self.pool.fetch(
            "SELECT payload FROM outbox WHERE topic = $1 AND position($2::bytea IN payload) > 0 ORDER BY id",
            topic, str(video_id).encode(),
        )
        return [bytes(r["payload"]) for r in rows]

    async def facts_rows(self, video_id: uuid.UUID) -> int:
        return int(await self.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = $1 AND payload = $2", FACTS_TOPIC, str(video_id).encode()))


@pytest.fixture
async def ingest(pg_dsn: str) -> AsyncIterator[Ingest]:
    pool = await service_db(pg_dsn, "ingest")
    videos = VideoStore(pool)
    relay = OutboxRelay(pool, {}, name="test-video-records")  # never started: rows stay for the tests to read
    yield Ingest(pool, videos, ServicerStub(IngestInternalServicer(videos, relay, facts_wait_s=0)))
    await pool.close()


# -- creation ----------------------------------------------------------------------------------------------


async def test_create_commits_the_job_submission_and_the_facts_with_the_video(ingest: Ingest) -> None:
    video = await ingest.new_video(title="first")
    assert (video.state, video.revision, video.generation, video.processing_fence) == ("PENDING", 1, 1, 0)

    [submit] = await ingest.rows(SUBMIT_JOB_TOPIC, video.id)
    assert pipeline_pb.SubmitVideoJobRequest.FromString(submit) == pipeline_pb.SubmitVideoJobRequest(
        video=f"videos/{video.id}", generation=1, owner=f"users/{OWNER}", priority=PRIORITY_STANDARD)
    assert await ingest.rows(FACTS_TOPIC, video.id) == [str(video.id).encode()]
    # One transaction wrote all three rows (same creating transaction id).
    xmins = await ingest.pool.fetch(
        "SELECT xmin::text AS x FROM videos WHERE id = $1 UNION ALL "
        "SELECT xmin::text FROM outbox WHERE topic = ANY($2::text[]) AND position($3::bytea IN payload) > 0",
        video.id, [SUBMIT_JOB_TOPIC, FACTS_TOPIC], str(video.id).encode(),
    )
    assert len(xmins) == 3 and len({r["x"] for r in xmins}) == 1


async def test_a_create_that_fails_leaves_no_video_and_no_outbox_rows(ingest: Ingest) -> None:
    uploads = UploadStore(ingest.pool)
    upload = await uploads.create(Upload(uuid.uuid4(), "ACTIVE", datetime.now(UTC) + timedelta(hours=1)))
    await uploads.cancel(upload.id)
    video_id = uuid.uuid4()
    with pytest.raises(FailedPrecondition) as refused:
        await ingest.videos.create(Video(video_id, f"videos/{video_id}/source.mp4", "PENDING"), upload.id)
    assert refused.value.reason == "UPLOAD_NOT_ACTIVE"
    with pytest.raises(NotFound):
        await ingest.videos.get(video_id)
    assert await ingest.rows(SUBMIT_JOB_TOPIC, video_id) == []
    assert await ingest.rows(FACTS_TOPIC, video_id) == []


# -- UpdateVideoProcessing ---------------------------------------------------------------------------------


async def test_updates_are_fenced_and_a_superseded_run_changes_nothing(ingest: Ingest) -> None:
    video = await ingest.new_video()
    answer = await ingest.update(video, 3, PROCESSING, width=640)
    assert (answer.state, answer.changed) == ("PROCESSING", True)
    accepted = await ingest.videos.get(video.id)
    assert (accepted.state, accepted.width, accepted.processing_fence, accepted.revision) == ("PROCESSING", 640, 3, 2)
    facts_before = await ingest.facts_rows(video.id)

    for stale in (READY, FAILED, CANCELLED, pb.PROCESSING_STATE_UNSPECIFIED):
        with pytest.raises(FailedPrecondition) as refused:
            await ingest.update(video, 2, stale, width=1920, failure_reason="late" if stale == FAILED else "")
        assert refused.value.reason == "RUN_SUPERSEDED"
    assert await ingest.videos.get(video.id) == accepted  # nothing changed, not even update_time
    assert await ingest.facts_rows(video.id) == facts_before

    # The same fence is still the current run's: it goes through.
    answer = await ingest.update(video, 3, READY)
    assert (answer.state, answer.changed) == ("READY", True)


async def test_a_higher_fence_that_changes_nothing_still_fences_older_runs(ingest: Ingest) -> None:
    video = await ingest.new_video()
    answer = await ingest.update(video, 5)  # no state, no facts: nothing to change but the fence
    assert (answer.state, answer.changed) == ("PENDING", False)
    after = await ingest.videos.get(video.id)
    assert (after.processing_fence, after.revision) == (5, video.revision)
    with pytest.raises(FailedPrecondition) as refused:
        await ingest.update(video, 4, PROCESSING)
    assert refused.value.reason == "RUN_SUPERSEDED"
    assert (await ingest.videos.get(video.id)).state == "PENDING"


async def test_facts_are_stored_and_the_same_update_twice_changes_nothing(ingest: Ingest) -> None:
    video = await ingest.new_video()
    facts = {name: value for name, value, _ in ALL_FACTS}
    first = await ingest.update(video, 1, READY, **facts)
    assert (first.state, first.changed) == ("READY", True)
    stored = await ingest.videos.get(video.id)
    assert {column: getattr(stored, column) for _, _, column in ALL_FACTS} == {
        column: value for _, value, column in ALL_FACTS}
    assert (stored.state, stored.revision) == ("READY", video.revision + 1)
    facts_rows = await ingest.facts_rows(video.id)

    again = await ingest.update(video, 1, READY, **facts)
    assert (again.state, again.changed) == ("READY", False)
    assert await ingest.videos.get(video.id) == stored
    assert await ingest.facts_rows(video.id) == facts_rows

    # Facts not set in a request are left as they are.
    partial = await ingest.update(video, 1, scene_count=8)
    assert (partial.state, partial.changed) == ("READY", True)
    after = await ingest.videos.get(video.id)
    assert (after.scene_count, after.width, after.thumbnail_key) == (8, 1280, "videos/x/thumbnail.jpg")


async def test_ready_clears_the_failure_reason(ingest: Ingest) -> None:
    video = await ingest.new_video()
    assert (await ingest.update(video, 1, FAILED, failure_reason="decoder crashed")).state == "FAILED"
    failed = await ingest.videos.get(video.id)
    assert (failed.state, failed.failure_reason) == ("FAILED", "decoder crashed")

    assert (await ingest.update(video, 2, PROCESSING)).state == "PROCESSING"  # the retry's run
    assert (await ingest.videos.get(video.id)).state == "PROCESSING"
    answer = await ingest.update(video, 2, READY, duration_seconds=3.0)
    assert (answer.state, answer.changed) == ("READY", True)
    ready = await ingest.videos.get(video.id)
    assert (ready.state, ready.failure_reason, ready.duration_s) == ("READY", "", 3.0)


async def test_cancel_fails_an_unfinished_video_but_leaves_a_ready_one_ready(ingest: Ingest) -> None:
    pending = await ingest.new_video()
    answer = await ingest.update(pending, 1, CANCELLED)
    assert (answer.state, answer.changed) == ("FAILED", True)
    got = await ingest.videos.get(pending.id)
    assert (got.state, got.failure_reason, got.revision) == ("FAILED", "processing cancelled", pending.revision + 1)

    processing = await ingest.new_video()
    await ingest.update(processing, 1, PROCESSING)
    answer = await ingest.update(processing, 2, CANCELLED)
    assert (answer.state, answer.changed) == ("FAILED", True)
    got = await ingest.videos.get(processing.id)
    assert (got.state, got.failure_reason) == ("FAILED", "processing cancelled")

    with_reason = await ingest.new_video()
    await ingest.update(with_reason, 1, CANCELLED, failure_reason="deleted by its owner")
    assert (await ingest.videos.get(with_reason.id)).failure_reason == "deleted by its owner"

    ready = await ingest.new_video()
    await ingest.update(ready, 1, READY)
    before = await ingest.videos.get(ready.id)
    facts_rows = await ingest.facts_rows(ready.id)
    answer = await ingest.update(ready, 2, CANCELLED)
    assert (answer.state, answer.changed) == ("READY", False)
    after = await ingest.videos.get(ready.id)
    assert (after.state, after.failure_reason, after.revision) == ("READY", "", before.revision)
    assert await ingest.facts_rows(ready.id) == facts_rows


async def test_every_change_bumps_the_revision_and_publishes_the_facts(ingest: Ingest) -> None:
    video = await ingest.new_video()
    assert (video.revision, await ingest.facts_rows(video.id)) == (1, 1)  # create

    changes = [
        lambda: ingest.update(video, 1, PROCESSING),
        lambda: ingest.update(video, 1, duration_seconds=4.0),
        lambda: ingest.videos.update_fields(video.id, owner=OWNER, title="renamed"),
        lambda: ingest.update(video, 2, READY, scene_count=2),
        lambda: ingest.videos.update_fields(video.id, owner=None, description="about it"),
    ]
    for n, change in enumerate(changes, start=2):
        before = await ingest.videos.get(video.id)
        await change()
        after = await ingest.videos.get(video.id)
        assert after.revision == n and after.update_time is not None and before.update_time is not None
        assert after.update_time >= before.update_time
        assert await ingest.rows(FACTS_TOPIC, video.id) == [str(video.id).encode()] * n
    final = await ingest.videos.get(video.id)
    assert (final.state, final.title, final.description, final.scene_count) == ("READY", "renamed", "about it", 2)


# -- GetVideoSource and deletion ---------------------------------------------------------------------------


async def test_get_video_source_names_the_bytes_and_sidecar(ingest: Ingest) -> None:
    video = await ingest.new_video(title="a talk", sidecar_key="videos/s/sidecar.srt", sidecar_format="SRT",
                                   sidecar_language="en", duration_s=42.5)
    source = await ingest.internal.GetVideoSource(pb.GetVideoSourceRequest(video=f"videos/{video.id}"))
    assert source == pb.VideoSource(video=f"videos/{video.id}", blob_key=video.blob_key,
                                    sidecar_key="videos/s/sidecar.srt", sidecar_format="SRT",
                                    sidecar_language="en", title="a talk", owner=f"users/{OWNER}",
                                    duration_seconds=42.5)


async def test_a_deleted_video_asks_for_its_jobs_and_index_to_go_and_is_not_found(ingest: Ingest) -> None:
    video = await ingest.new_video()
    await ingest.update(video, 1, PROCESSING)
    deleted = await ingest.videos.delete(video.id, owner=OWNER)
    assert deleted.id == video.id and deleted.state == "PROCESSING"
    name = f"videos/{video.id}"

    [jobs] = await ingest.rows(DELETE_JOBS_TOPIC, video.id)
    assert pipeline_pb.DeleteVideoJobsRequest.FromString(jobs) == pipeline_pb.DeleteVideoJobsRequest(video=name)
    [index] = await ingest.rows(DELETE_INDEX_TOPIC, video.id)
    assert search_pb.DeleteVideoIndexRequest.FromString(index) == search_pb.DeleteVideoIndexRequest(video=name)

    facts_rows = await ingest.facts_rows(video.id)
    for call in (lambda: ingest.internal.GetVideoSource(pb.GetVideoSourceRequest(video=name)),
                 lambda: ingest.update(video, 2, READY, duration_seconds=1.0),
                 lambda: ingest.update(video, 2, CANCELLED),
                 lambda: ingest.videos.delete(video.id, owner=None)):
        with pytest.raises(NotFound) as gone:
            await call()
        assert gone.value.reason == "VIDEO_NOT_FOUND" and gone.value.metadata == {"name": name}
    assert await ingest.facts_rows(video.id) == facts_rows
    assert len(await ingest.rows(DELETE_JOBS_TOPIC, video.id)) == 1  # a second delete wrote nothing
    assert len(await ingest.rows(DELETE_INDEX_TOPIC, video.id)) == 1


async def test_a_video_never_stored_is_not_found(ingest: Ingest) -> None:
    name = f"videos/{uuid.uuid4()}"
    with pytest.raises(NotFound) as gone:
        await ingest.internal.GetVideoSource(pb.GetVideoSourceRequest(video=name))
    assert gone.value.reason == "VIDEO_NOT_FOUND"
    with pytest.raises(NotFound) as gone:
        await ingest.internal.UpdateVideoProcessing(pb.UpdateVideoProcessingRequest(video=name, fence=1, state=READY))
    assert gone.value.reason == "VIDEO_NOT_FOUND"


# -- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", f"jobs/{uuid.uuid4()}", "videos/not-a-uuid", "videos/"])
async def test_a_malformed_video_name_is_an_invalid_argument_naming_the_field(ingest: Ingest, name: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await ingest.internal.GetVideoSource(pb.GetVideoSourceRequest(video=name))
    assert [v.field for v in bad.value.field_violations] == ["video"]
    with pytest.raises(InvalidArgument) as bad:
        await ingest.internal.UpdateVideoProcessing(pb.UpdateVideoProcessingRequest(video=name, fence=1, state=READY))
    assert [v.field for v in bad.value.field_violations] == ["video"]


@pytest.mark.parametrize(("fields", "field"), [
    ({"fence": -1}, "fence"),
    ({"transcript_source": "WHISPER"}, "transcript_source"),
    ({"transcript_source": ""}, "transcript_source"),
    ({"duration_seconds": -1.0}, "duration_seconds"),
    ({"width": -1}, "width"),
    ({"height": -2}, "height"),
    ({"frame_rate": -25.0}, "frame_rate"),
    ({"scene_count": -3}, "scene_count"),
    ({"failure_reason": "x" * (MAX_REASON_CHARS + 1)}, "failure_reason"),
])
async def test_a_bad_update_is_an_invalid_argument_naming_the_field_and_changes_nothing(
    ingest: Ingest, fields: dict[str, Any], field: str
) -> None:
    video = await ingest.new_video()
    request = pb.UpdateVideoProcessingRequest(video=f"videos/{video.id}", state=READY, **{"fence": 1, **fields})
    with pytest.raises(InvalidArgument) as bad:
        await ingest.internal.UpdateVideoProcessing(request)
    assert [v.field for v in bad.value.field_violations] == [field]
    assert await ingest.videos.get(video.id) == video
    assert await ingest.facts_rows(video.id) == 1


# -- the outbox handlers (services.ingest.relays) -----------------------------------------------------------


class Recorder:
    """A stub of another service (pipeline or search) that records the requests it gets; ``fail`` is raised
    instead, once per call, while set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: Exception | None = None

    def __getattr__(self, method: str) -> Any:
        async def call(request: Any) -> None:
            self.calls.append((method, request))
            if self.fail is not None:
                raise self.fail
        return call


async def test_the_facts_handler_sends_the_video_as_it_is_at_delivery(ingest: Ingest) -> None:
    pipeline, search = Recorder(), Recorder()
    handlers = relays.handlers(ingest.videos, pipeline, search, Recorder())
    video = await ingest.new_video(title="before")
    [created_payload] = await ingest.rows(FACTS_TOPIC, video.id)
    await ingest.update(video, 1, READY, duration_seconds=9.5)
    await ingest.videos.update_fields(video.id, owner=OWNER, title="after")
    now = await ingest.videos.get(video.id)
    assert now.revision == 3

    await handlers[FACTS_TOPIC](created_payload)  # the oldest row, delivered late: today's facts
    assert pipeline.calls == []
    assert search.calls == [("UpsertVideoFacts", search_pb.UpsertVideoFactsRequest(facts=search_pb.VideoFacts(
        video=f"videos/{video.id}", revision=3, title="after", blob_key=video.blob_key, state="READY",
        duration_seconds=9.5, create_time=timestamp(now.create_time), owner=f"users/{OWNER}",
    )))]

    await ingest.videos.delete(video.id, owner=None)
    search.calls.clear()
    for payload in await ingest.rows(FACTS_TOPIC, video.id):
        await handlers[FACTS_TOPIC](payload)  # deleted since: nothing to send, and done
    assert search.calls == [] and pipeline.calls == []


async def test_the_other_handlers_forward_their_requests(ingest: Ingest) -> None:
    pipeline, search = Recorder(), Recorder()
    handlers = relays.handlers(ingest.videos, pipeline, search, Recorder())
    video = await ingest.new_video()
    [submit] = await ingest.rows(SUBMIT_JOB_TOPIC, video.id)
    await ingest.videos.delete(video.id, owner=None)
    [jobs] = await ingest.rows(DELETE_JOBS_TOPIC, video.id)
    [index] = await ingest.rows(DELETE_INDEX_TOPIC, video.id)
    name = f"videos/{video.id}"

    await handlers[SUBMIT_JOB_TOPIC](submit)
    await handlers[DELETE_JOBS_TOPIC](jobs)
    await handlers[DELETE_INDEX_TOPIC](index)
    assert pipeline.calls == [
        ("SubmitVideoJob", pipeline_pb.SubmitVideoJobRequest(video=name, generation=1, owner=f"users/{OWNER}",
                                                             priority=PRIORITY_STANDARD)),
        ("DeleteVideoJobs", pipeline_pb.DeleteVideoJobsRequest(video=name)),
    ]
    assert search.calls == [("DeleteVideoIndex", search_pb.DeleteVideoIndexRequest(video=name))]


async def test_a_videos_life_is_its_owners_usage(ingest: Ingest) -> None:
    """Stored, ready (twice: processed again), deleted: each a usage fact in the transaction of the change, for
    analytics, with its own event id; the handler forwards them as RecordUsage."""
    analytics = Recorder()
    handlers = relays.handlers(ingest.videos, Recorder(), Recorder(), analytics)
    video = await ingest.new_video(size_bytes=1234)
    await ingest.update(video, 1, READY, duration_seconds=9.5)
    await ingest.update(video, 1, READY, duration_seconds=9.5)  # the same update again: no new fact
    await ingest.update(video, 2, FAILED, failure_reason="reprocessing failed")
    await ingest.update(video, 3, READY)
    await ingest.videos.delete(video.id, owner=None)
    payloads = await ingest.rows(usage_events.TOPIC, video.id)
    events = [analytics_pb.UsageEvent.FromString(p) for p in payloads]
    K = analytics_pb.UsageEvent
    assert [(e.kind, e.bytes, e.seconds) for e in events] == [
        (K.KIND_VIDEO_UPLOADED, 1234, 0), (K.KIND_VIDEO_PROCESSED, 0, 9.5), (K.KIND_VIDEO_PROCESSED, 0, 9.5),
        (K.KIND_VIDEO_DELETED, 1234, 0)]
    assert {(e.user, e.video) for e in events} == {(f"users/{OWNER}", f"videos/{video.id}")}
    assert len({e.event_id for e in events}) == 4 and all(e.HasField("event_time") for e in events)
    for payload in payloads:
        await handlers[usage_events.TOPIC](payload)
    assert analytics.calls == [("RecordUsage", analytics_pb.RecordUsageRequest(events=[e])) for e in events]


async def test_a_submission_queued_before_ownership_gets_the_videos_owner(ingest: Ingest) -> None:
    pipeline, search = Recorder(), Recorder()
    handlers = relays.handlers(ingest.videos, pipeline, search, Recorder())
    video = await ingest.new_video()
    name = f"videos/{video.id}"
    queued_before = pipeline_pb.SubmitVideoJobRequest(video=name, generation=1).SerializeToString()

    await handlers[SUBMIT_JOB_TOPIC](queued_before)
    assert pipeline.calls == [
        ("SubmitVideoJob", pipeline_pb.SubmitVideoJobRequest(video=name, generation=1, owner=f"users/{OWNER}"))]
    await ingest.videos.delete(video.id, owner=None)
    pipeline.calls.clear()
    await handlers[SUBMIT_JOB_TOPIC](queued_before)  # its video gone since: nothing to submit, and done
    assert pipeline.calls == [] and search.calls == []


async def test_the_submit_handler_swallows_not_found_and_retries_the_rest(ingest: Ingest) -> None:
    pipeline, search = Recorder(), Recorder()
    handlers = relays.handlers(ingest.videos, pipeline, search, Recorder())
    video = await ingest.new_video()
    [submit] = await ingest.rows(SUBMIT_JOB_TOPIC, video.id)

    pipeline.fail = NotFound("video gone", reason="VIDEO_NOT_FOUND")
    await handlers[SUBMIT_JOB_TOPIC](submit)  # returns: the row is done
    pipeline.fail = Unavailable("pipeline restarting", reason="SERVICE_UNAVAILABLE")
    with pytest.raises(Unavailable):  # raises: the relay tries the row again later
        await handlers[SUBMIT_JOB_TOPIC](submit)
    assert [method for method, _ in pipeline.calls] == ["SubmitVideoJob", "SubmitVideoJob"]
