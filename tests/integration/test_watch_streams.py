"""WatchJob streams against a real gRPC server, PostgreSQL and redis-server: heartbeats on quiet streams,
the per-process cap, one Redis subscription for all streams, no memory left behind by 1,000 streams
(pipeline server in its own process, RSS from /proc), a 30 s Redis outage ridden out by polling, and
drain() ending every stream with UNAVAILABLE SHUTTING_DOWN."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
import redis.asyncio as aioredis
from clipmind.pipeline.v1 import pipeline_service_pb2 as pb
from clipmind.pipeline.v1 import pipeline_service_pb2_grpc as pb_grpc

from services.common.auth import Authenticator
from services.common.auth_interceptor import AuthInterceptor
from services.common.blobstore import LocalBlobStore
from services.common.grpc_errors import ErrorInterceptor
from services.common.progress import ProgressBus
from services.common.queue import ArqJobQueue
from services.common.revocations import Revocations
from services.launcher import EmbeddedRedis, free_port
from services.launcher.process import ManagedProcess
from services.launcher.services import REPO_ROOT, grpc_serving, python_path
from services.pipeline.compilation_store import CompilationStore
from services.pipeline.compilations import CompilationControl
from services.pipeline.job_store import JobStore
from services.pipeline.jobs import JobControl
from services.pipeline.records import Job
from services.pipeline.servicer import PipelineServicer
from services.pipeline.watch import JobWatcher
from tests.auth_setup import SIGNER, TEST_KEYS, aio_channel
from tests.db_setup import service_db
from tests.e2e.clients import rich_status

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    jobs: JobStore
    bus: ProgressBus
    watcher: JobWatcher
    stub: pb_grpc.PipelineServiceStub


class NoCatalog:
    """Ingest's side of CreateCompilation, which these tests of WatchJob never call."""

    async def source(self, video_id: uuid.UUID) -> None:
        raise AssertionError("no compilations in the WatchJob tests")


@asynccontextmanager
async def pipeline(pg_dsn: str, redis_url: str, *, heartbeat_s: float = 15.0, poll_s: float = 3.0,
                   max_streams: int = 1000, health_check_s: float = 5.0,
                   max_backoff_s: float = 5.0) -> AsyncIterator[Stack]:
    """PipelineServicer wired as services/pipeline/server.py does (callers authenticated by the same interceptor),
    on a grpc.aio server on port 0; the stub calls as the system, which sees every job."""
    pool = await service_db(pg_dsn, "pipeline")
    bus = ProgressBus.connect(redis_url, health_check_s=health_check_s, max_backoff_s=max_backoff_s)
    queue = await ArqJobQueue.connect(redis_url)
    jobs = JobStore(pool)
    watcher = JobWatcher(jobs, bus, heartbeat_s=heartbeat_s, poll_s=poll_s, max_streams=max_streams)
    revocations = Revocations.from_url(redis_url)
    server = grpc.aio.server(interceptors=[AuthInterceptor(Authenticator(SIGNER, revocations, None)),
                                           ErrorInterceptor()])
    blobs = LocalBlobStore(Path(tempfile.mkdtemp(prefix="clipmind-watch-")), "http://media.invalid")  # unused here
    compilations = CompilationControl(CompilationStore(pool), jobs, NoCatalog(), queue, blobs,  # type: ignore[arg-type]
                                      None)  # type: ignore[arg-type]
    pb_grpc.add_PipelineServiceServicer_to_server(
        PipelineServicer(JobControl(jobs, bus, queue), watcher, compilations, blobs), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio_channel(f"127.0.0.1:{port}")
    try:
        yield Stack(jobs, bus, watcher, pb_grpc.PipelineServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(1)
        await revocations.close()
        await queue.close()
        await bus.close()
        await pool.close()


async def new_job(jobs: JobStore) -> Job:
    job = Job(uuid.uuid4(), uuid.uuid4(), "QUEUED")
    await jobs.create(job)
    return job


async def record(jobs: JobStore, bus: ProgressBus, job_id: uuid.UUID, message: str,
                 job_state: str = "RUNNING") -> int:
    """One job event, then its notice, as the worker's reporter does."""
    event = await jobs.record_event(job_id, stage="SCENES", stage_state="PROGRESS", progress=None, message=message,
                                    job_state=job_state)
    await bus.publish_best_effort(job_id, event.sequence)
    return event.sequence


def watch(stub: pb_grpc.PipelineServiceStub, job_id: uuid.UUID, after: int = 0) -> grpc.aio.UnaryStreamCall:
    return stub.WatchJob(pb.WatchJobRequest(name=f"jobs/{job_id}", after_sequence=after))


async def rest_of(call: grpc.aio.UnaryStreamCall) -> list[pb.JobEvent]:
    """The messages left on a stream read with ``read()`` (gRPC forbids mixing it with iteration)."""
    messages = []
    while (message := await asyncio.wait_for(call.read(), 30)) is not grpc.aio.EOF:
        messages.append(message)
    return messages


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_quiet_stream_sends_heartbeats_with_the_last_sequence(pg_dsn: str, redis_url: str) -> None:
    async with pipeline(pg_dsn, redis_url, heartbeat_s=0.5) as s:
        job = await new_job(s.jobs)
        await record(s.jobs, s.bus, job.id, "one")
        await record(s.jobs, s.bus, job.id, "two")
        call = watch(s.stub, job.id)
        assert [(await call.read()).sequence for _ in range(2)] == [1, 2]

        started = time.monotonic()
        beats = [await asyncio.wait_for(call.read(), 2) for _ in range(3)]
        assert all(b.heartbeat and b.sequence == 2 and b.job == f"jobs/{job.id}" for b in beats), beats
        assert not any(b.message or b.job_state or b.stage for b in beats)
        assert 1.2 <= time.monotonic() - started < 3.0  # about every 0.5 s, not a busy loop

        await record(s.jobs, s.bus, job.id, "three")
        got = await asyncio.wait_for(call.read(), 2)
        assert (got.sequence, got.message, got.heartbeat) == (3, "three", False)
        await record(s.jobs, s.bus, job.id, "done", job_state="SUCCEEDED")
        rest = await rest_of(call)
        assert [m.sequence for m in rest if not m.heartbeat] == [4]
        assert await call.code() == grpc.StatusCode.OK

        # A client resuming from a heartbeat's sequence loses nothing.
        resumed = [m async for m in watch(s.stub, job.id, after=beats[-1].sequence)]
        assert [m.message for m in resumed] == ["three", "done"]


async def test_streams_past_the_cap_are_refused_until_one_ends(pg_dsn: str, redis_url: str) -> None:
    async with pipeline(pg_dsn, redis_url, max_streams=3) as s:
        jobs = [await new_job(s.jobs) for _ in range(2)]
        for job in jobs:
            await record(s.jobs, s.bus, job.id, "started")
        calls = [watch(s.stub, jobs[i % 2].id) for i in range(3)]
        for call in calls:
            assert (await call.read()).sequence == 1
        assert s.watcher.open_streams == 3
        assert s.bus.listened_jobs == 2  # one entry per job, shared by its streams

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(watch(s.stub, jobs[0].id).read(), 2)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rich_status(refused.value)[0] == "TOO_MANY_STREAMS"

        calls[0].cancel()
        await eventually(lambda: s.watcher.open_streams == 2)
        again = watch(s.stub, jobs[0].id)
        assert (await asyncio.wait_for(again.read(), 2)).sequence == 1

        for call in [*calls[1:], again]:
            call.cancel()
        await eventually(lambda: s.watcher.open_streams == 0 and s.bus.listened_jobs == 0)


async def test_drain_ends_open_streams_with_unavailable(pg_dsn: str, redis_url: str) -> None:
    async with pipeline(pg_dsn, redis_url) as s:
        job = await new_job(s.jobs)
        await record(s.jobs, s.bus, job.id, "started")
        calls = [watch(s.stub, job.id) for _ in range(3)]
        for call in calls:
            assert (await call.read()).sequence == 1

        started = time.monotonic()
        await s.watcher.drain()
        assert time.monotonic() - started < 2.0
        assert s.watcher.open_streams == 0
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(call.read(), 2)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert rich_status(ended.value)[0] == "SHUTTING_DOWN"
            assert "after_sequence=1" in (ended.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(watch(s.stub, job.id).read(), 2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# -- 1,000 streams against a pipeline server in its own process --------------------------------------------

BATCH = 100


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def open_and_cancel(stub: pb_grpc.PipelineServiceStub, job_ids: list[uuid.UUID], redis: aioredis.Redis) -> None:
    """BATCH streams at once over the given jobs, each read up to its first event, then all cancelled.
    While they are open the server holds one pattern subscription and no per-job channel."""
    calls = [watch(stub, job_ids[i % len(job_ids)]) for i in range(BATCH)]
    firsts = await asyncio.wait_for(asyncio.gather(*(call.read() for call in calls)), 60)
    assert all(first.sequence == 1 for first in firsts)
    assert await redis.execute_command("PUBSUB", "NUMPAT") == 1
    assert await redis.execute_command("PUBSUB", "CHANNELS", "clipmind:job:*") == []
    for call in calls:
        call.cancel()


@dataclass
class PipelineProcess:
    server: ManagedProcess
    pid: int
    stub: pb_grpc.PipelineServiceStub
    jobs: JobStore
    bus: ProgressBus
    redis: aioredis.Redis


@pytest.fixture
async def pipeline_process(
    pg_dsn: str, redis_url: str, integration_state_dir: Path
) -> AsyncIterator[PipelineProcess]:
    """``python -m services.pipeline`` configured by CLIPMIND_* only, as the launcher starts it."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": python_path(), "PYTHONUNBUFFERED": "1", "CLIPMIND_DATABASE_URL": pg_dsn,
           "CLIPMIND_REDIS_URL": redis_url, "CLIPMIND_GRPC_HOST": "127.0.0.1", "CLIPMIND_GRPC_PORT": str(port),
           "CLIPMIND_LOG_LEVEL": "WARNING", "CLIPMIND_JWT_KEYS": TEST_KEYS}
    server = ManagedProcess(name="pipeline-watch", argv=[sys.executable, "-m", "services.pipeline"],
                            log_path=integration_state_dir / "logs" / f"pipeline-watch-{port}.log", env=env,
                            cwd=REPO_ROOT, stop_timeout_s=15.0)
    server.start()
    pool = await service_db(pg_dsn, "pipeline")
    bus = ProgressBus.connect(redis_url)
    redis = aioredis.from_url(redis_url)
    channel = aio_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.to_thread(server.wait_ready, lambda: grpc_serving(f"127.0.0.1:{port}"), 60.0, 0.3)
        assert server.pid is not None
        yield PipelineProcess(server, server.pid, pb_grpc.PipelineServiceStub(channel), JobStore(pool), bus, redis)
    finally:
        await channel.close()
        await redis.aclose()
        await bus.close()
        await pool.close()
        await asyncio.to_thread(server.stop)


async def test_a_thousand_streams_leave_no_memory_behind(pipeline_process: PipelineProcess) -> None:
    p = pipeline_process
    job_ids = [(await new_job(p.jobs)).id for _ in range(50)]
    for job_id in job_ids:
        await record(p.jobs, p.bus, job_id, "started")

    for _ in range(2):  # warm-up: pools, caches, code paths, allocator arenas
        await open_and_cancel(p.stub, job_ids, p.redis)
    await asyncio.sleep(2)
    before = rss_mb(p.pid)
    started = time.monotonic()
    for _ in range(1000 // BATCH):
        await open_and_cancel(p.stub, job_ids, p.redis)
    elapsed = time.monotonic() - started
    await asyncio.sleep(2)
    after = rss_mb(p.pid)
    print(f"\n1000 WatchJob streams in {elapsed:.1f} s; pipeline RSS {before:.1f} MB -> {after:.1f} MB")
    assert after < before * 1.10, (before, after)
    assert p.server.running()


async def test_sigterm_ends_open_streams_with_unavailable(pipeline_process: PipelineProcess) -> None:
    p = pipeline_process
    job = await new_job(p.jobs)
    await record(p.jobs, p.bus, job.id, "started")
    call = watch(p.stub, job.id)
    assert (await call.read()).sequence == 1

    started = time.monotonic()
    os.kill(p.pid, signal.SIGTERM)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(call.read(), 10)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rich_status(ended.value)[0] == "SHUTTING_DOWN"
    assert time.monotonic() - started < 5.0  # not the server's whole grace period
    await eventually(lambda: not p.server.running(), timeout_s=20)  # and the process exits


# -- Redis outage -------------------------------------------------------------------------------------------

OUTAGE_S = 30.0


@pytest.mark.chaos
async def test_a_stream_rides_out_a_redis_outage(pg_dsn: str, integration_state_dir: Path) -> None:
    port = free_port()
    redis_server = EmbeddedRedis(integration_state_dir / f"redis-outage-{port}",
                                 integration_state_dir / "logs" / f"redis-outage-{port}.log", port)
    await asyncio.to_thread(redis_server.start)
    worker_bus = ProgressBus.connect(redis_server.url, connect_timeout_s=1.0, socket_timeout_s=1.0)
    try:
        # Heartbeats every 10 s: while Redis is up, only a notice brings an event in well under that.
        async with pipeline(pg_dsn, redis_server.url, heartbeat_s=10.0, poll_s=0.5, health_check_s=1.0,
                            max_backoff_s=1.0) as s:
            job = await new_job(s.jobs)
            await record(s.jobs, worker_bus, job.id, "before")
            call = watch(s.stub, job.id)
            assert (await call.read()).message == "before"
            await eventually(lambda: s.bus.live)

            received: dict[str, float] = {}
            order: list[str] = []

            async def read_all() -> None:
                while (message := await call.read()) is not grpc.aio.EOF:
                    if not message.heartbeat:
                        received[message.message] = time.monotonic()
                        order.append(message.message)

            reader = asyncio.create_task(read_all())

            async def latency(message: str, within_s: float) -> float:
                """Record an event (notice published as the worker does); seconds until the stream has it."""
                sent = time.monotonic()
                await record(s.jobs, worker_bus, job.id, message)
                while message not in received:
                    assert not reader.done(), f"stream ended early: {reader}"
                    assert time.monotonic() - sent < within_s, f"{message!r} not delivered within {within_s} s"
                    await asyncio.sleep(0.02)
                return received[message] - sent

            assert await latency("live", 1.0) < 1.0

            await asyncio.to_thread(redis_server.stop)
            outage_started = time.monotonic()
            await eventually(lambda: not s.bus.live, timeout_s=5)
            during: list[float] = []
            while time.monotonic() - outage_started < OUTAGE_S - 5:
                await asyncio.sleep(4)
                during.append(await latency(f"outage {len(during)}", 3.0))  # by polling Postgres
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
            await asyncio.to_thread(redis_server.start)
            await eventually(lambda: s.bus.live, timeout_s=10)
            assert await latency("back", 1.0) < 1.0  # a notice again, not the 10 s re-read

            resumed = watch(s.stub, job.id, after=2)  # a client that saw "before" and "live"
            await record(s.jobs, worker_bus, job.id, "done", job_state="SUCCEEDED")
            await asyncio.wait_for(reader, 3)  # the stream ends right after the final event
            resumed_messages = [m.message async for m in resumed if not m.heartbeat]
            assert await call.code() == grpc.StatusCode.OK
            assert await resumed.code() == grpc.StatusCode.OK

            outage = [f"outage {i}" for i in range(len(during))]
            assert order == ["live", *outage, "back", "done"]
            assert resumed_messages == order[1:]
            assert len(during) >= 4, during
            assert s.watcher.open_streams == 0 and s.bus.listened_jobs == 0
            print(f"\nevent latency during a {OUTAGE_S:.0f} s Redis outage (by polling): "
                  f"{', '.join(f'{d:.2f}' for d in during)} s")
    finally:
        await worker_bus.close()
        await asyncio.to_thread(redis_server.stop)
