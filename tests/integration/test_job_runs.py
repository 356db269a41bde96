"""Job runs against real PostgreSQL and redis-server: claims, leases, fencing, backoff, take-over, hand-back.

The stages are a small stand-in for ``VideoProcessor`` (same ``run(run, stopping)`` contract, reading the
video's source from ingest and reporting through the real reporter) so each case is fast and exact; the e2e
chaos tests run the real stages. Ingest's side runs in-process (its servicer on its own schema, called as the
pipeline outbox relay's stub would over gRPC).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb

from services.common import usage_events
from services.common.blobstore import LocalBlobStore
from services.common.errors import Unavailable
from services.common.outbox import OutboxRelay
from services.common.principal import SYSTEM
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue, queue_key
from services.ingest.internal_servicer import IngestInternalServicer
from services.ingest.records import Video
from services.ingest.store import VideoStore
from services.media.probe import run_tool
from services.pipeline.ingest_client import IngestClient, relay_handlers
from services.pipeline.job_store import JobStore
from services.pipeline.jobs import JobControl
from services.pipeline.processor import STAGE_WEIGHTS
from services.pipeline.records import Job, Run
from services.pipeline.reporter import JobReporter
from services.pipeline.runs import JobRunner, RunPolicy, backoff_s
from tests.db_setup import ServicerStub, service_db

pytestmark = pytest.mark.integration


class Stages:
    """Stand-in stages: ``behaviour(attempt)`` runs inside SCENES (raise, sleep, run ffmpeg...)."""

    def __init__(self, reporter: JobReporter, catalog: IngestClient, behaviour: Callable[[int], object]) -> None:
        self.reporter = reporter
        self.catalog = catalog
        self.behaviour = behaviour
        self.runs: list[tuple[int, float]] = []  # (attempt, monotonic start)

    async def run(self, run: Run, stopping: asyncio.Event | None = None) -> None:
        self.runs.append((run.attempt, time.monotonic()))
        await self.catalog.source(run.video_id)
        report = self.reporter.for_run(run, STAGE_WEIGHTS, stopping)
        await report.start("SCENES", "detecting")
        result = self.behaviour(run.attempt)
        if asyncio.iscoroutine(result):
            await result
        await report.done("SCENES", "1 scene")
        await report.start("INDEX", "writing")
        await report.finish("INDEX", "done")


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
    reporter = JobReporter(jobs, bus)
    blobs = LocalBlobStore(tmp_path / "blobs", "http://media.invalid")

    def runner(behaviour: Callable[[int], object], **policy: float) -> tuple[JobRunner, Stages]:
        stages = Stages(reporter, IngestClient(ingest), behaviour)
        settings = RunPolicy(**{"lease_s": 30.0, "heartbeat_s": 0.5, "cancel_poll_s": 0.2, "retry_base_s": 0.0,
                                **policy})
        return JobRunner(jobs, reporter, queue, blobs, stages, settings, worker="test:1"), stages  # type: ignore[arg-type]

    yield pool, jobs, videos, JobControl(jobs, bus, queue), runner
    await relay.stop()
    await queue.close()
    await bus.close()
    await pool.close()
    await ingest_pool.close()


async def _new_job(jobs: JobStore, videos: VideoStore | None, max_attempts: int = 3) -> Job:
    """A queued job, and its stored video unless ``videos`` is None (a job whose video is gone)."""
    video_id, job_id = uuid.uuid4(), uuid.uuid4()
    job = Job(job_id, video_id, "QUEUED", max_attempts=max_attempts, queue_key=queue_key(job_id))
    if videos is not None:
        await videos.create(Video(video_id, f"videos/{video_id}/source.mp4", "PENDING"))
    await jobs.create(job)
    return job


async def test_a_queue_entry_runs_only_the_attempt_it_stands_for(parts) -> None:  # type: ignore[no-untyped-def]
    _, jobs, videos, _, runner = parts
    job = await _new_job(jobs, videos)
    run, stages = runner(lambda attempt: None)
    assert "nothing to run" in await run.run(job.id, f"{job.id}:stale")  # an old entry of the job
    assert await run.run(job.id, job.queue_key) == "succeeded"
    assert "nothing to run" in await run.run(job.id, job.queue_key)  # the same entry delivered twice
    assert len(stages.runs) == 1
    done = await jobs.get(job.id, scope=None)
    assert (done.state, done.attempt, done.run_id) == ("SUCCEEDED", 1, None)


async def test_every_run_commits_its_worker_time_as_the_owners_usage(parts) -> None:  # type: ignore[no-untyped-def]
    """However a run ends — failed and retried, succeeded, or its worker lost — its time from the claim is a
    PROCESSING_RUN usage fact of the job's owner (a lost worker's counts up to its lease's end)."""
    pool, jobs, videos, control, runner = parts
    owner = uuid.uuid4()
    job = await _new_job(jobs, videos)
    await pool.execute("UPDATE jobs SET owner_id = $2 WHERE id = $1", job.id, owner)

    async def slow_then_fail_once(attempt: int) -> None:
        await asyncio.sleep(0.3 if attempt == 1 else 0.6)
        if attempt == 1:
            raise Unavailable("triton blip", reason="MODEL_UNAVAILABLE")

    run, _ = runner(slow_then_fail_once)
    assert await run.run(job.id, job.queue_key) == "will retry"
    assert await run.run(job.id, (await jobs.get(job.id, scope=None)).queue_key) == "succeeded"
    lost = await _new_job(jobs, videos)
    claimed = await jobs.claim(lost.id, queue_key=lost.queue_key, run_id=uuid.uuid4(), worker="dead:1", lease_s=0.2)
    assert claimed is not None
    await asyncio.sleep(0.6)
    assert await jobs.oldest_run_age_s() >= 0.6  # the worker's gauge of the oldest running attempt
    assert await control.take_over_expired(idle_s=60) == [lost.id]

    async def usage(video_id: uuid.UUID) -> list[analytics_pb.UsageEvent]:
        rows = await pool.fetch("SELECT payload FROM outbox WHERE topic = $1 AND position($2::bytea IN payload) > 0 "
                                "ORDER BY id", usage_events.TOPIC, str(video_id).encode())
        return [analytics_pb.UsageEvent.FromString(bytes(r["payload"])) for r in rows]

    runs = await usage(job.video_id)
    assert [e.kind for e in runs] == [analytics_pb.UsageEvent.KIND_PROCESSING_RUN] * 2
    assert {e.user for e in runs} == {f"users/{owner}"}
    assert 0.3 <= runs[0].seconds < 3 and 0.6 <= runs[1].seconds < 3
    [taken_over] = await usage(lost.video_id)
    assert 0.15 <= taken_over.seconds < 0.45  # to the lease's end, not to the take-over


async def test_failed_attempts_back_off_exponentially_then_dead_letter(parts) -> None:  # type: ignore[no-untyped-def]
    _, jobs, videos, _, runner = parts
    job = await _new_job(jobs, videos, max_attempts=3)
    base = 0.4

    def fail(attempt: int) -> None:
        raise Unavailable(f"triton blip {attempt}", reason="MODEL_UNAVAILABLE")

    run, stages = runner(fail, retry_base_s=base)
    key = job.queue_key
    for attempt in (1, 2, 3):
        outcome = await run.run(job.id, key)
        row = await jobs.get(job.id, scope=None)
        if attempt < 3:
            assert outcome == "will retry" and row.state == "QUEUED"
            events = await jobs.events(job.id, scope=None)
            assert f"next attempt in {backoff_s(base, attempt):g} s" in events[-1].message
            await asyncio.sleep(backoff_s(base, attempt))  # the queue defers the entry this long
            key = row.queue_key
        else:
            assert outcome == "failed"
    gaps = [b[1] - a[1] for a, b in zip(stages.runs, stages.runs[1:], strict=False)]
    assert gaps[0] == pytest.approx(base, abs=0.25) and gaps[1] == pytest.approx(2 * base, abs=0.25)
    failed = await jobs.get(job.id, scope=None)
    assert (failed.state, failed.attempt, failed.failure_code) == ("FAILED", 3, "MODEL_UNAVAILABLE")
    assert failed.failure_reason == "MODEL_UNAVAILABLE: triton blip 3"
    letters = [d for d in await jobs.dead_letters(scope=None, limit=50, after=None) if d.job_id == job.id]
    assert [(d.attempts, d.failure_code) for d in letters] == [(3, "MODEL_UNAVAILABLE")]
    video = await videos.get(job.video_id)  # the dead letter reached ingest through the pipeline's outbox
    assert (video.state, video.failure_reason) == ("FAILED", "MODEL_UNAVAILABLE: triton blip 3")


async def test_a_dead_letter_shows_every_attempt_and_a_retry_runs_again_from_attempt_1(parts) -> None:  # type: ignore[no-untyped-def]
    pool, jobs, videos, control, runner = parts
    job = await _new_job(jobs, videos, max_attempts=2)
    fixed = False

    def fail_until_fixed(attempt: int) -> None:
        if not fixed:
            raise Unavailable(f"triton blip {attempt}", reason="MODEL_UNAVAILABLE")

    run, stages = runner(fail_until_fixed)
    assert await run.run(job.id, job.queue_key) == "will retry"
    assert await run.run(job.id, (await jobs.get(job.id, scope=None)).queue_key) == "failed"
    [letter] = [d for d in await jobs.dead_letters(scope=None, limit=50, after=None) if d.job_id == job.id]
    assert [(a.attempt, a.failure_code, a.message, a.worker) for a in letter.history] == [
        (1, "MODEL_UNAVAILABLE", "triton blip 1", "test:1"), (2, "MODEL_UNAVAILABLE", "triton blip 2", "test:1")]

    fixed = True  # an operator mends the cause and retries the dead letter's job
    retried = await control.retry(SYSTEM, letter.job_id)
    assert (retried.state, retried.attempt) == ("QUEUED", 0)
    assert await run.run(job.id, retried.queue_key) == "succeeded"
    assert [attempt for attempt, _ in stages.runs] == [1, 2, 1]  # from attempt 1 again
    done = await jobs.get(job.id, scope=None)
    assert (done.state, done.attempt) == ("SUCCEEDED", 1)
    assert not [d for d in await jobs.dead_letters(scope=None, limit=50, after=None) if d.job_id == job.id]
    assert await pool.fetchval("SELECT count(*) FROM attempt_failures WHERE job_id = $1", job.id) == 0


async def test_dead_letters_past_their_retention_are_purged(parts) -> None:  # type: ignore[no-untyped-def]
    pool, jobs, videos, control, runner = parts
    old, recent = await _new_job(jobs, videos, max_attempts=1), await _new_job(jobs, videos, max_attempts=1)

    def fail(attempt: int) -> None:
        raise Unavailable("gone for good", reason="MODEL_UNAVAILABLE")

    run, _ = runner(fail)
    for job in (old, recent):
        assert await run.run(job.id, job.queue_key) == "failed"
    await pool.execute("UPDATE dead_letters SET create_time = now() - interval '31 days' WHERE job_id = $1", old.id)
    assert await control.purge_dead_letters(older_than_s=30 * 86400) >= 1
    left = {d.job_id for d in await jobs.dead_letters(scope=None, limit=500, after=None)}
    assert old.id not in left and recent.id in left
    assert (await jobs.get(old.id, scope=None)).state == "FAILED"  # the job itself stays, failed


async def test_internal_errors_keep_details_out_of_the_job(parts, caplog) -> None:  # type: ignore[no-untyped-def]
    _, jobs, videos, _, runner = parts
    job = await _new_job(jobs, videos, max_attempts=1)

    def boom(attempt: int) -> None:
        raise OSError("/srv/secret/path/source.mp4: host db-internal.example unreachable")

    run, _ = runner(boom)
    assert await run.run(job.id, job.queue_key) == "failed"
    failed = await jobs.get(job.id, scope=None)
    assert failed.failure_code == "INTERNAL"
    assert failed.failure_reason.startswith("INTERNAL: internal error during processing (request id ")
    assert "/srv" not in failed.failure_reason and "example" not in failed.failure_reason
    request_id = failed.failure_reason.rsplit("request id ", 1)[1].rstrip(")")
    assert any(request_id in r.getMessage() for r in caplog.records), "the log holds the details under the id"


async def test_cancel_stops_a_running_subprocess_within_2s_and_fences_the_run(parts) -> None:  # type: ignore[no-untyped-def]
    _, jobs, videos, control, runner = parts
    job = await _new_job(jobs, videos)
    started = asyncio.Event()

    async def long_tool(attempt: int) -> None:  # a stage's long subprocess (ffmpeg runs the same way)
        started.set()
        await run_tool(["sleep", "600"], timeout_s=700)

    run, stages = runner(long_tool)
    task = asyncio.create_task(run.run(job.id, job.queue_key))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.5)
    assert _children("sleep"), "the stage's subprocess should be running"
    cancelled_at = time.monotonic()
    await control.cancel(SYSTEM, job.id)
    outcome = await asyncio.wait_for(task, 5)
    assert time.monotonic() - cancelled_at < 2.0
    assert "cancelled" in outcome
    assert not _children("sleep"), "the stage's subprocess still runs after the cancel"
    events = await jobs.events(job.id, scope=None)
    assert events[-1].job_state == "CANCELLED"  # the stopped run wrote nothing after the cancel

    retried = await control.retry(SYSTEM, job.id)  # retry right after: exactly one new run
    run2, stages2 = runner(lambda attempt: None)
    assert await run2.run(job.id, retried.queue_key) == "succeeded"
    assert len(stages2.runs) == 1 and len(stages.runs) == 1


async def test_a_dead_workers_run_is_taken_over_then_dead_lettered(parts) -> None:  # type: ignore[no-untyped-def]
    pool, jobs, videos, control, _ = parts
    job = await _new_job(jobs, videos, max_attempts=2)
    for attempt in (1, 2):  # a worker claims the job and dies (no heartbeat ever again)
        key = (await jobs.get(job.id, scope=None)).queue_key
        claimed = await jobs.claim(job.id, queue_key=key, run_id=uuid.uuid4(), worker="dead:7", lease_s=0.2)
        assert claimed is not None and claimed[0].attempt == attempt
        await asyncio.sleep(0.3)
        assert await control.take_over_expired(idle_s=60) == [job.id]
    failed = await jobs.get(job.id, scope=None)
    assert (failed.state, failed.failure_code) == ("FAILED", "WORKER_LOST")
    assert "dead:7 stopped during" in failed.failure_reason and "attempt 2 of 2" in failed.failure_reason
    letters = [d for d in await jobs.dead_letters(scope=None, limit=50, after=None) if d.job_id == job.id]
    assert [d.failure_code for d in letters] == ["WORKER_LOST"]
    video = await videos.get(job.video_id)
    assert video.state == "FAILED" and video.failure_reason.startswith("WORKER_LOST: dead:7 stopped during")
    for _ in range(3):  # never again, however often the sweeps run
        assert await control.take_over_expired(idle_s=0) == []
        await pool.execute("UPDATE jobs SET update_time = now() - interval '1 hour' WHERE id = $1", job.id)
        assert job.id not in await control.requeue_lost(idle_s=1)
    assert (await jobs.get(job.id, scope=None)).state == "FAILED"


async def test_a_live_run_keeps_its_lease_and_a_superseded_run_writes_nothing(parts) -> None:  # type: ignore[no-untyped-def]
    _, jobs, videos, control, runner = parts
    job = await _new_job(jobs, videos)
    release = asyncio.Event()

    async def slow(attempt: int) -> None:
        await release.wait()

    run, _ = runner(slow, lease_s=1.0, heartbeat_s=0.2)
    task = asyncio.create_task(run.run(job.id, job.queue_key))
    await asyncio.sleep(2.0)  # twice the lease: only the heartbeat keeps it
    assert await control.take_over_expired(idle_s=60) == []
    # Now the run hangs (its heartbeat stops, as in a frozen process) and the sweep takes the job over.
    await jobs._pool.execute("UPDATE jobs SET lease_expire_time = now() - interval '1 second' WHERE id = $1", job.id)
    assert await control.take_over_expired(idle_s=60) == [job.id]
    release.set()
    assert "cancelled or taken over" in await asyncio.wait_for(task, 5)
    row = await jobs.get(job.id, scope=None)
    assert row.state == "QUEUED" and row.attempt == 1  # the stale run finished nothing
    assert not [e for e in await jobs.events(job.id, scope=None) if e.job_state == "SUCCEEDED"]


async def test_stopping_hands_the_job_back_without_using_an_attempt(parts) -> None:  # type: ignore[no-untyped-def]
    _, jobs, videos, _, runner = parts
    job = await _new_job(jobs, videos)
    stopping = asyncio.Event()

    async def then_stop(attempt: int) -> None:
        stopping.set()  # SIGTERM arrives while SCENES runs: the stage finishes, the next one is not started

    run, _ = runner(then_stop)
    assert await run.run(job.id, job.queue_key, stopping=stopping) == "handed back"
    row = await jobs.get(job.id, scope=None)
    assert (row.state, row.attempt, row.run_id) == ("QUEUED", 0, None)
    assert row.queue_key != job.queue_key
    run2, _ = runner(lambda attempt: None)
    assert await run2.run(job.id, row.queue_key) == "succeeded"
    assert (await jobs.get(job.id, scope=None)).attempt == 1


async def test_a_job_whose_video_is_gone_is_removed_by_its_run(parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A job submitted after its video's deletion reached the pipeline (outbox rows retried out of order): its
    run finds the video gone in ingest and removes the job and whatever the run wrote."""
    _, jobs, _, _, runner = parts
    job = await _new_job(jobs, None)
    leftover = tmp_path / "blobs" / "videos" / str(job.video_id) / "thumbnail.jpg"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"jpeg")
    run, _ = runner(lambda attempt: None)
    assert await run.run(job.id, job.queue_key) == "video deleted while processing"
    assert await jobs.list_page(scope=None, limit=10, after=None, video_id=job.video_id) == []
    assert not leftover.exists()


def _children(command: str) -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if int(fields[1]) == me and name == command and fields[0] != "Z":
            found.append(int(entry))
    return found
