"""Compilations against real PostgreSQL, Redis and ffmpeg (issue 13): asked for by their owner over the caller's
own videos (another user's video, or compilation, is NOT_FOUND; bad spans and options name the field), stored with
a render job that a worker's runner runs like any job — the file rendered from the stored sources (stream copy
for one source and no options), recorded on the compilation by the run with the owner's usage fact — then read,
listed and deleted with its file.

Ingest's side runs in process (its internal servicer on its own schema, as the pipeline's stub would call it)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb

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
from services.pipeline.compilation_store import CompilationStore
from services.pipeline.compilations import CompilationControl
from services.pipeline.ingest_client import IngestClient, relay_handlers
from services.pipeline.job_store import JobStore
from services.pipeline.records import CompilationOptions, CompilationPiece
from services.pipeline.renderer import CompilationRenderer
from services.pipeline.reporter import JobReporter
from services.pipeline.runs import JobRunner, RunPolicy
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
    control = CompilationControl(store, jobs, catalog, queue, blobs)
    runner = JobRunner(jobs, reporter, queue, blobs, NoVideoJobs(),  # type: ignore[arg-type]
                       RunPolicy(lease_s=30.0, heartbeat_s=0.5, cancel_poll_s=0.2, retry_base_s=0.0),
                       worker="test:1", renderer=CompilationRenderer(store, catalog, reporter, blobs))
    yield pool, videos, blobs, control, jobs, runner, tmp_path
    await relay.stop()
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
    pool, videos, blobs, control, jobs, runner, folder = parts
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
    _, videos, blobs, control, jobs, runner, folder = parts
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
    _, videos, blobs, control, _, _, folder = parts
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
    _, videos, blobs, control, jobs, runner, folder = parts
    video = await _stored_video(videos, blobs, folder, ALICE)
    made = await control.create(ALICE, [CompilationPiece(video.id, 0, 2)], CompilationOptions())
    job = await jobs.get(made.job_id, scope=None)
    await control.delete(ALICE, made.id)
    assert "nothing to run" in await runner.run(job.id, job.queue_key)  # its queue entry finds no job
    assert not blobs.local_path(compilation_key(made.id)).exists()
