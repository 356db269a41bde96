"""Compilations against real PostgreSQL, Redis and ffmpeg (issue 13): asked for by their owner over the caller's
own videos (another user's video, or compilation, is NOT_FOUND; bad spans and options name the field), stored with
a render job that a worker's runner runs like any job — the file rendered from the stored sources (stream copy
for one source and no options), recorded on the compilation by the run with the owner's usage fact — then read,
listed and deleted with its file.

Ingest's, search's and analytics' sides run in process (their internal servicers on their own schemas, as the
pipeline's stubs would call them): a compilation asked for as clips or as a search's top results takes their
spans from the search index and the search log."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as log_pb
from clipmind.search.internal.v1 import search_internal_service_pb2 as search_pb

from services.analytics.internal_servicer import AnalyticsInternalServicer
from services.analytics.search_log import SearchLogStore
from services.analytics.usage import UsageStore
from services.common import usage_events
from services.common.blobstore import LocalBlobStore
from services.common.errors import InvalidArgument, NotFound
from services.common.outbox import OutboxRelay
from services.common.principal import Principal
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue
from services.ingest.internal_servicer import IngestInternalServicer
from services.ingest.records import Video
from services.ingest.store import VideoStore
from services.media.compose import probe_source
from services.media.layout import compilation_key, source_key
from services.pipeline.clip_sources import ClipSourcesClient
from services.pipeline.compilation_store import CompilationStore
from services.pipeline.compilations import CompilationControl
from services.pipeline.ingest_client import IngestClient, relay_handlers
from services.pipeline.job_store import JobStore
from services.pipeline.records import ClipRequest, CompilationOptions, CompilationPiece
from services.pipeline.renderer import CompilationRenderer
from services.pipeline.reporter import JobReporter
from services.pipeline.runs import JobRunner, RunPolicy
from services.search.clip_store import ClipStore
from services.search.internal_servicer import SearchInternalServicer
from tests.db_setup import ServicerStub, service_db
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.integration

ALICE, BOB = Principal(uuid.uuid4(), "user"), Principal(uuid.uuid4(), "user")


class NoVideoJobs:
    """The runner's video processor, which these tests never reach: they run compilations' render jobs only."""

    async def run(self, *args: object) -> None:
        raise AssertionError("a video job in a compilations test")


@pytest.fixture
async def parts(pg_dsn: str, redis_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    pool, ingest_pool = await service_db(pg_dsn, "pipeline"), await service_db(pg_dsn, "ingest")
    search_pool, analytics_pool = await service_db(pg_dsn, "search"), await service_db(pg_dsn, "analytics")
    search = ServicerStub(SearchInternalServicer(ClipStore(search_pool)))
    analytics = ServicerStub(AnalyticsInternalServicer(SearchLogStore(analytics_pool), UsageStore(analytics_pool)))
    bus = ProgressBus.connect(redis_url)
    queue = await ArqJobQueue.connect(redis_url)
    videos = VideoStore(ingest_pool)
    ingest = ServicerStub(IngestInternalServicer(videos, OutboxRelay(ingest_pool, {}, name="ingest"), facts_wait_s=0))
    relay = OutboxRelay(pool, relay_handlers(ingest), name="pipeline", poll_s=0.2)
    relay.start()
    jobs = JobStore(pool, on_fact=lambda fact: relay.deliver_soon(fact, 10))
    blobs = LocalBlobStore(tmp_path / "blobs", "http://media.invalid")
    catalog = IngestClient(ingest)
    reporter = JobReporter(jobs, bus)
    store = CompilationStore(pool)
    control = CompilationControl(store, jobs, catalog, queue, blobs, ClipSourcesClient(search, analytics))
    runner = JobRunner(jobs, reporter, queue, blobs, NoVideoJobs(),  # type: ignore[arg-type]
                       RunPolicy(lease_s=30.0, heartbeat_s=0.5, cancel_poll_s=0.2, retry_base_s=0.0),
                       worker="test:1", renderer=CompilationRenderer(store, catalog, reporter, blobs))
    yield pool, videos, blobs, control, jobs, runner, tmp_path, (search, analytics)
    await relay.stop()
    await search_pool.close()
    await analytics_pool.close()
    await queue.close()
    await bus.close()
    await pool.close()
    await ingest_pool.close()


async def _stored_video(videos: VideoStore, blobs: LocalBlobStore, folder: Path, owner: Principal) -> Video:
    """A 6 s H.264 video (two 3 s scenes, a keyframe a second) stored as ``owner``'s upload."""
    path = make_scene_video(folder / f"{uuid.uuid4().hex}.mp4",
                            (SceneSpec(3.0, "testsrc2"), SceneSpec(3.0, "smptebars")))
    video_id = uuid.uuid4()
    video = Video(video_id, source_key(video_id, ".mp4"), "READY", owner_id=owner.user_id, duration_s=6.0,
                  size_bytes=path.stat().st_size)
    await blobs.put_file(video.blob_key, path)
    await videos.create(video)
    return video


async def test_a_compilation_is_rendered_by_its_job_read_listed_and_deleted_with_its_file(parts) -> None:  # type: ignore[no-untyped-def]
    pool, videos, blobs, control, jobs, runner, folder, _ = parts
    video = await _stored_video(videos, blobs, folder, ALICE)
    pieces = [CompilationPiece(video.id, 0.0, 2.0), CompilationPiece(video.id, 3.0, 5.5)]
    made = await control.create(ALICE, pieces, CompilationOptions())
    assert (made.state, made.owner_id, made.pieces) == ("QUEUED", ALICE.user_id, pieces)
    job = await jobs.get(made.job_id, scope=ALICE.user_id)
    assert (job.compilation_id, job.video_id, job.owner_id) == (made.id, None, ALICE.user_id)

    assert await runner.run(job.id, job.queue_key) == "succeeded"
    done = await control.get(ALICE, made.id)
    assert (done.state, done.render_method, done.output_key) == ("SUCCEEDED", "stream_copy", compilation_key(made.id))
    output = blobs.local_path(done.output_key)
    assert done.size_bytes == output.stat().st_size
    probed = await probe_source(output)
    assert probed.video_codec == "h264" and abs(probed.duration_s - done.duration_s) < 0.1
    assert 4.4 <= done.duration_s <= 5.6  # 2 + 2.5 s, each in point moved back to its keyframe (one a second)
    stages = {e.stage for e in await jobs.events(job.id, scope=None)}
    assert stages == {"STAGE_UNSPECIFIED", "RENDER"}  # the claim's event, then the render's
    facts = [analytics_pb.UsageEvent.FromString(bytes(r["payload"])) for r in await pool.fetch(
        "SELECT payload FROM outbox WHERE topic = $1 AND position($2::bytea IN payload) > 0",
        usage_events.TOPIC, f"users/{ALICE.user_id}".encode())]
    [rendered] = [f for f in facts if f.kind == analytics_pb.UsageEvent.KIND_COMPILATION_RENDERED]
    assert (rendered.bytes, rendered.seconds) == (done.size_bytes, pytest.approx(done.duration_s))

    assert [c.id for c in await control.list_page(ALICE, limit=10, after=None)][:1] == [made.id]
    assert made.id not in [c.id for c in await control.list_page(BOB, limit=10, after=None)]
    with pytest.raises(NotFound):  # another user's compilation: as if there were none
        await control.get(BOB, made.id)
    with pytest.raises(NotFound):
        await control.delete(BOB, made.id)

    await control.delete(ALICE, made.id)
    assert not output.exists()  # its link stops working
    with pytest.raises(NotFound):
        await control.get(ALICE, made.id)
    with pytest.raises(NotFound):  # the render job went with it
        await jobs.get(job.id, scope=None)


async def test_a_compilation_of_mixed_sources_with_options_is_one_filter_graph(parts) -> None:  # type: ignore[no-untyped-def]
    _, videos, blobs, control, jobs, runner, folder, _ = parts
    first, second = [await _stored_video(videos, blobs, folder, ALICE) for _ in range(2)]
    made = await control.create(ALICE, [CompilationPiece(first.id, 0.5, 2.5), CompilationPiece(second.id, 1.0, 3.0)],
                                CompilationOptions(crossfade_s=0.5, title_text="Best of", title_s=1.0, width=320,
                                                   height=180))
    job = await jobs.get(made.job_id, scope=None)
    assert await runner.run(job.id, job.queue_key) == "succeeded"
    done = await control.get(ALICE, made.id)
    assert done.render_method == "filter_graph"
    assert done.duration_s == pytest.approx(1.0 + 2.0 + 2.0 - 0.5, abs=0.1)  # title + pieces - one crossfade
    probed = await probe_source(blobs.local_path(done.output_key))
    assert (probed.width, probed.height, probed.audio_codec) == (320, 180, "aac")


async def test_only_the_callers_own_videos_and_sound_requests_are_taken(parts) -> None:  # type: ignore[no-untyped-def]
    _, videos, blobs, control, _, _, folder, _ = parts
    mine, theirs = await _stored_video(videos, blobs, folder, ALICE), await _stored_video(videos, blobs, folder, BOB)
    with pytest.raises(NotFound) as hidden:  # BOB's video in ALICE's request: as if it did not exist
        await control.create(ALICE, [CompilationPiece(mine.id, 0, 1), CompilationPiece(theirs.id, 0, 1)],
                             CompilationOptions())
    assert hidden.value.reason == "VIDEO_NOT_FOUND"
    with pytest.raises(NotFound):
        await control.create(ALICE, [CompilationPiece(uuid.uuid4(), 0, 1)], CompilationOptions())
    admin = Principal(uuid.uuid4(), "admin")
    assert (await control.create(admin, [CompilationPiece(theirs.id, 0, 1)], CompilationOptions())).id

    bad = {
        "compilation.clips": ([], CompilationOptions()),
        "compilation.clips[0].end_seconds": ([CompilationPiece(mine.id, 2, 1)], CompilationOptions()),
        "compilation.clips[1].start_seconds": ([CompilationPiece(mine.id, 0, 1), CompilationPiece(mine.id, -1, 1)],
                                               CompilationOptions()),
        "compilation.options.crossfade_seconds": ([CompilationPiece(mine.id, 0, 1)],
                                                  CompilationOptions(crossfade_s=0.8)),
        "compilation.options.width": ([CompilationPiece(mine.id, 0, 1)], CompilationOptions(width=321, height=180)),
        "compilation.options.title_text": ([CompilationPiece(mine.id, 0, 1)], CompilationOptions(title_text="a\nb")),
    }
    for field, (pieces, options) in bad.items():
        with pytest.raises(InvalidArgument) as refused:
            await control.create(ALICE, pieces, options)
        assert [v.field for v in refused.value.field_violations] == [field]
    with pytest.raises(InvalidArgument) as past:  # the video is 6 s long
        await control.create(ALICE, [CompilationPiece(mine.id, 5, 9)], CompilationOptions())
    assert [v.field for v in past.value.field_violations] == ["compilation.clips[0].end_seconds"]


async def test_deleting_a_queued_compilation_cancels_its_render(parts) -> None:  # type: ignore[no-untyped-def]
    _, videos, blobs, control, jobs, runner, folder, _ = parts
    video = await _stored_video(videos, blobs, folder, ALICE)
    made = await control.create(ALICE, [CompilationPiece(video.id, 0, 2)], CompilationOptions())
    job = await jobs.get(made.job_id, scope=None)
    await control.delete(ALICE, made.id)
    assert "nothing to run" in await runner.run(job.id, job.queue_key)  # its queue entry finds no job
    assert not blobs.local_path(compilation_key(made.id)).exists()


async def _indexed(search: ServicerStub, video: Video, owner: Principal) -> list[uuid.UUID]:
    """The video's two 3 s scenes indexed as its owner's clips (as the pipeline's index write makes them)."""
    clips = [uuid.uuid4(), uuid.uuid4()]
    request = search_pb.ReplaceVideoIndexRequest(video=f"videos/{video.id}", fence=1, owner=owner.name)
    for i, clip in enumerate(clips):
        request.clips.add(id=str(clip), index=i, start_seconds=3.0 * i, end_seconds=3.0 * i + 3.0)
    await search.ReplaceVideoIndex(request)
    await search.UpsertVideoFacts(search_pb.UpsertVideoFactsRequest(facts=search_pb.VideoFacts(
        video=f"videos/{video.id}", revision=1, title="t", blob_key=video.blob_key, state="READY",
        duration_seconds=6.0, owner=owner.name)))
    return clips


async def test_a_compilation_of_clips_or_of_a_searchs_top_results(parts) -> None:  # type: ignore[no-untyped-def]
    _, videos, blobs, control, jobs, runner, folder, (search, analytics) = parts
    video = await _stored_video(videos, blobs, folder, ALICE)
    first, second = await _indexed(search, video, ALICE)

    trimmed = await control.create(ALICE, [ClipRequest(second, 0.5, 1.0), ClipRequest(first)], CompilationOptions())
    assert trimmed.pieces == [CompilationPiece(video.id, 3.5, 5.0, second), CompilationPiece(video.id, 0.0, 3.0, first)]
    job = await jobs.get(trimmed.job_id, scope=None)
    assert await runner.run(job.id, job.queue_key) == "succeeded"

    search_id = uuid.uuid4()  # ALICE searched; the log has its ranking: second, then first
    logged = log_pb.LoggedSearch(search_id=str(search_id), query="q", result_count=2, latency_ms=5, user=ALICE.name)
    logged.search_time.GetCurrentTime()
    for rank, clip in enumerate((second, first), 1):
        logged.results.add(clip=f"clips/{clip}", video=f"videos/{video.id}", rank=rank, score=1.0 / rank)
    await analytics.LogSearches(log_pb.LogSearchesRequest(searches=[logged]))
    top = await control.create(ALICE, [], CompilationOptions(), search_id=search_id, top=1)
    assert [(p.clip_id, p.start_s, p.end_s) for p in top.pieces] == [(second, 3.0, 6.0)]
    everything = await control.create(ALICE, [], CompilationOptions(), search_id=search_id)
    assert [p.clip_id for p in everything.pieces] == [second, first]

    with pytest.raises(NotFound):  # another user's search: as if there were none
        await control.create(BOB, [], CompilationOptions(), search_id=search_id)
    with pytest.raises(InvalidArgument):  # the internal calls name what is malformed
        await analytics.GetSearchResults(log_pb.GetSearchResultsRequest(search_id="not-a-search"))
    with pytest.raises(InvalidArgument) as bad_clip:
        await search.GetClipSpans(search_pb.GetClipSpansRequest(clips=[f"clips/{first}", "videos/x"]))
    assert [v.field for v in bad_clip.value.field_violations] == ["clips[1]"]
    with pytest.raises(NotFound) as hidden:  # another user's clip too
        await control.create(BOB, [ClipRequest(first)], CompilationOptions())
    assert hidden.value.reason == "CLIP_NOT_FOUND"
    for field, requested, search in (
            ("compilation.clips[0].trim_end_seconds", [ClipRequest(first, 1.5, 1.5)], None),
            ("compilation.clips[0].trim_start_seconds", [ClipRequest(first, -1.0)], None),
            ("search_id", [ClipRequest(first)], search_id)):
        with pytest.raises(InvalidArgument) as refused:
            await control.create(ALICE, requested, CompilationOptions(), search_id=search)
        assert [v.field for v in refused.value.field_violations] == [field]
