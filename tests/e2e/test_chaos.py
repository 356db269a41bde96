"""Chaos on the whole mesh as `clipmind up` runs it, supervised: killed workers, a Postgres restart, a Redis
outage, cancels mid-stage. One mesh for the module, with leases, sweeps and backoff shrunk so each case
takes seconds rather than minutes; the invariants are checked in PostgreSQL itself afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from clipmind.pipeline.v1 import pipeline_service_pb2 as pb
from clipmind.pipeline.v1 import pipeline_service_pb2_grpc as pipeline_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.launcher import Mesh, MeshConfig, MeshPorts
from tests.e2e.clients import authenticated_channel, bearer, rest_upload
from tests.e2e.conftest import LIMITS_ENV, MODEL_ENV, mesh_user_key
from tests.media import SceneSpec, make_scene_video

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

CHAOS_ENV = {
    **MODEL_ENV,
    **LIMITS_ENV,
    "CLIPMIND_LEASE_S": "4",
    "CLIPMIND_HEARTBEAT_S": "1",
    "CLIPMIND_CANCEL_POLL_S": "0.5",
    "CLIPMIND_SWEEP_EVERY_S": "2",
    "CLIPMIND_RETRY_BASE_S": "1",
    "CLIPMIND_REQUEUE_IDLE_S": "10",
}
SERVICES = ("ingest", "pipeline", "search", "analytics", "identity")


@pytest.fixture(scope="module")
def chaos_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    patch = pytest.MonkeyPatch()
    for key, value in MODEL_ENV.items():
        patch.setenv(key, value)
    mesh = Mesh(MeshConfig(state_dir=tmp_path_factory.mktemp("chaos"), ports=MeshPorts.free(), extra_env=CHAOS_ENV))
    mesh.start()
    mesh.start_supervisor(interval_s=0.25)
    try:
        yield mesh
    finally:
        mesh.stop()
        patch.undo()


@pytest.fixture(scope="module")
def user_key(chaos_mesh: Mesh) -> str:
    return mesh_user_key(chaos_mesh, "chaos@example.com")


@pytest.fixture(scope="module")
def rest(chaos_mesh: Mesh, user_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=chaos_mesh.endpoints.envoy_url, timeout=120, headers=bearer(user_key)) as client:
        yield client


@pytest.fixture(scope="module")
def jobs_api(chaos_mesh: Mesh, user_key: str) -> Iterator[pipeline_grpc.PipelineServiceStub]:
    with authenticated_channel(chaos_mesh.endpoints.pipeline, user_key) as channel:
        yield pipeline_grpc.PipelineServiceStub(channel)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three minutes of cuts every 10 s: scene detection takes long enough to be interrupted."""
    sources = ["testsrc2", "color=c=red", "smptebars", "color=c=blue", "testsrc", "color=c=green"]
    scenes = [SceneSpec(10.0, sources[i % len(sources)]) for i in range(18)]
    return make_scene_video(tmp_path_factory.mktemp("chaos-media") / "long.mp4", scenes, size="320x240",
                            audio=False)


def _db(mesh: Mesh):  # type: ignore[no-untyped-def]
    import asyncio

    def run(query: str, *args: object) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(mesh.endpoints.database_url)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(go())

    return run


def _upload(rest: httpx.Client, path: Path) -> tuple[str, str]:
    response = rest_upload(rest, path, title=f"chaos {uuid.uuid4().hex[:6]}")
    assert response.status_code == 200, response.text
    video = response.json()
    return video["name"], video["job"]


def _job(jobs_api: pipeline_grpc.PipelineServiceStub, name: str) -> pb.Job:
    return jobs_api.GetJob(pb.GetJobRequest(name=name), timeout=10)


ENDED = (pb.Job.STATE_SUCCEEDED, pb.Job.STATE_FAILED, pb.Job.STATE_CANCELLED)


def _wait_for(jobs_api, name: str, done: Callable[[pb.Job], bool], what: str, timeout_s: float) -> pb.Job:  # type: ignore[no-untyped-def]
    """Poll the job (riding out errors while a part restarts) until ``done`` says so."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            job = _job(jobs_api, name)
        except grpc.RpcError:
            time.sleep(0.2)
            continue
        if done(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {name} did not {what} in {timeout_s} s")


def _wait_for_stage(jobs_api, name: str, stage: int, *, attempt: int | None = None, timeout_s: float = 120) -> pb.Job:  # type: ignore[no-untyped-def]
    def reached(job: pb.Job) -> bool:
        if job.state in ENDED:
            raise AssertionError(f"job ended before reaching stage {stage}: {job}")
        return job.state == pb.Job.STATE_RUNNING and job.stage == stage and attempt in (None, job.attempt)

    return _wait_for(jobs_api, name, reached, f"reach stage {stage}", timeout_s)


def _wait_for_end(jobs_api, name: str, timeout_s: float = 240) -> pb.Job:  # type: ignore[no-untyped-def]
    return _wait_for(jobs_api, name, lambda job: job.state in ENDED, "end", timeout_s)


def _events(jobs_api: pipeline_grpc.PipelineServiceStub, name: str) -> list[pb.JobEvent]:
    return [e for e in jobs_api.WatchJob(pb.WatchJobRequest(name=name), timeout=30) if not e.heartbeat]


def _kill_worker(mesh: Mesh) -> int:
    pid = mesh.part("worker").pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    return pid


def _wait_restarted(mesh: Mesh, name: str, old_pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = mesh.status()[name]
        if status.get("pid") not in (None, old_pid) and status.get("state") == "running":
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted: {mesh.status()[name]}")


def _assert_no_duplicates(db, video_id: uuid.UUID) -> None:  # type: ignore[no-untyped-def]
    (row,) = db(
        "SELECT (SELECT count(*) FROM search.clips WHERE video_id = $1) AS clips, "
        "(SELECT count(DISTINCT idx) FROM search.clips WHERE video_id = $1) AS distinct_clips, "
        "(SELECT count(*) FROM search.visual_vectors WHERE video_id = $1) AS visual, "
        "(SELECT count(*) FROM search.keyframes WHERE video_id = $1) AS keyframes, "
        "(SELECT count(DISTINCT k.clip_id) FROM search.keyframes k JOIN search.visual_vectors x ON x.id = k.id "
        " WHERE k.video_id = $1) AS embedded_clips, "
        "(SELECT scene_count FROM ingest.videos WHERE id = $1) AS scenes", video_id,
    )
    assert row["clips"] == row["distinct_clips"] == row["scenes"] > 1, dict(row)
    assert row["visual"] == row["keyframes"] and row["embedded_clips"] == row["clips"], dict(row)


def _restarts(mesh: Mesh) -> dict[str, int]:
    return {name: int(part.get("restarts", 0)) for name, part in mesh.status().items()}


def test_killed_worker_mid_scenes_is_restarted_and_the_job_completes_once(  # type: ignore[no-untyped-def]
    chaos_mesh: Mesh, rest, jobs_api, long_video: Path
) -> None:
    before = _restarts(chaos_mesh)
    video, job = _upload(rest, long_video)
    _wait_for_stage(jobs_api, job, pb.STAGE_SCENES, attempt=1)
    old = _kill_worker(chaos_mesh)
    _wait_restarted(chaos_mesh, "worker", old)
    for name in SERVICES:  # the mesh stayed up: every service still answers its health check
        with grpc.insecure_channel(chaos_mesh.endpoints.grpc[name]) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
    assert rest.get(f"/v1/{video}", timeout=10).status_code == 200

    done = _wait_for_end(jobs_api, job)
    assert done.state == pb.Job.STATE_SUCCEEDED, done
    assert done.attempt == 2
    events = _events(jobs_api, job)
    lost = [e for e in events if "WORKER_LOST" in e.message]
    assert len(lost) == 1 and "taken over as attempt 2" in lost[0].message
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert sum(e.job_state == pb.Job.STATE_SUCCEEDED for e in events) == 1
    _assert_no_duplicates(_db(chaos_mesh), uuid.UUID(video.split("/")[1]))
    after = _restarts(chaos_mesh)
    assert after["worker"] == before.get("worker", 0) + 1
    assert all(after[name] == before.get(name, 0) for name in SERVICES), after


def test_a_video_that_crashes_its_worker_every_time_is_dead_lettered_for_good(  # type: ignore[no-untyped-def]
    chaos_mesh: Mesh, rest, jobs_api, long_video: Path
) -> None:
    _, job = _upload(rest, long_video)
    for attempt in (1, 2, 3):
        _wait_for_stage(jobs_api, job, pb.STAGE_SCENES, attempt=attempt)
        old = _kill_worker(chaos_mesh)
        _wait_restarted(chaos_mesh, "worker", old)
    failed = _wait_for_end(jobs_api, job, timeout_s=60)
    assert failed.state == pb.Job.STATE_FAILED, failed
    assert failed.failure_reason.startswith("WORKER_LOST: ") and "attempt 3 of 3" in failed.failure_reason
    letters = jobs_api.ListDeadLetters(pb.ListDeadLettersRequest(page_size=100), timeout=10).dead_letters
    assert [d.attempts for d in letters if d.job == job] == [3]
    events = _events(jobs_api, job)
    time.sleep(3 * float(CHAOS_ENV["CLIPMIND_SWEEP_EVERY_S"]) + float(CHAOS_ENV["CLIPMIND_LEASE_S"]))
    assert _job(jobs_api, job).state == pb.Job.STATE_FAILED
    assert len(_events(jobs_api, job)) == len(events), "it ran again"


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its reaped and living children (utime+stime+cutime+cstime)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    for each in pids:
        try:
            with open(f"/proc/{each}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / tick
    return total


def test_cancel_during_scene_detection_idles_the_worker_within_2s_and_retry_runs_once(  # type: ignore[no-untyped-def]
    chaos_mesh: Mesh, rest, jobs_api, long_video: Path
) -> None:
    _, job = _upload(rest, long_video)
    _wait_for_stage(jobs_api, job, pb.STAGE_SCENES)
    time.sleep(0.5)
    worker = chaos_mesh.part("worker").pid
    assert worker
    jobs_api.CancelJob(pb.CancelJobRequest(name=job), timeout=10)
    time.sleep(2.0)
    used = _cpu_seconds(worker)
    time.sleep(1.0)
    assert _cpu_seconds(worker) - used < 0.25, "the worker still burns CPU 2 s after the cancel"

    retried = jobs_api.RetryJob(pb.RetryJobRequest(name=job), timeout=10)
    assert retried.state == pb.Job.STATE_QUEUED
    done = _wait_for_end(jobs_api, job)
    assert done.state == pb.Job.STATE_SUCCEEDED and done.attempt == 1
    events = _events(jobs_api, job)
    after_retry = events[[e.message for e in events].index("retry requested"):]
    assert sum("started on" in e.message for e in after_retry) == 1, [e.message for e in after_retry]


class _Follower:
    """A WatchJob stream kept open across outages, resuming with after_sequence when it breaks."""

    def __init__(self, target: str, job: str, credential: str) -> None:
        self.events: list[pb.JobEvent] = []
        self.resumes = 0
        self._target, self._job, self._credential = target, job, credential
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            last = self.events[-1].sequence if self.events else 0
            try:
                with authenticated_channel(self._target, self._credential) as channel:
                    stub = pipeline_grpc.PipelineServiceStub(channel)
                    for event in stub.WatchJob(pb.WatchJobRequest(name=self._job, after_sequence=last)):
                        if event.heartbeat:
                            continue
                        self.events.append(event)
                return
            except grpc.RpcError:
                self.resumes += 1
                time.sleep(1.0)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the stream never ended"


def test_redis_outage_of_30s_while_a_job_runs(  # type: ignore[no-untyped-def]
    chaos_mesh: Mesh, rest, jobs_api, long_video: Path, user_key: str
) -> None:
    before = _restarts(chaos_mesh)
    _, job = _upload(rest, long_video)
    follower = _Follower(chaos_mesh.endpoints.envoy_url.removeprefix("http://"), job, user_key)
    _wait_for_stage(jobs_api, job, pb.STAGE_SCENES)
    redis_pid = chaos_mesh.part("redis").pid
    assert redis_pid
    os.kill(redis_pid, signal.SIGSTOP)  # unreachable: connections hang until their timeouts
    try:
        time.sleep(30)
        assert _job(jobs_api, job).state in (pb.Job.STATE_RUNNING, pb.Job.STATE_SUCCEEDED)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    done = _wait_for_end(jobs_api, job)
    assert done.state == pb.Job.STATE_SUCCEEDED, done
    follower.join(60)
    assert [e.sequence for e in follower.events] == list(range(1, len(follower.events) + 1))
    assert follower.events[-1].job_state == pb.Job.STATE_SUCCEEDED
    assert _restarts(chaos_mesh) == before, "a part was restarted during the Redis outage"


def test_postgres_restart_while_a_job_runs(chaos_mesh: Mesh, rest, jobs_api, long_video: Path, user_key: str) -> None:  # type: ignore[no-untyped-def]
    before = _restarts(chaos_mesh)
    _, job = _upload(rest, long_video)
    follower = _Follower(chaos_mesh.endpoints.envoy_url.removeprefix("http://"), job, user_key)
    _wait_for_stage(jobs_api, job, pb.STAGE_SCENES)
    pg_pid = chaos_mesh.part("postgres").pid
    assert pg_pid
    os.kill(pg_pid, signal.SIGINT)  # fast shutdown: every session is terminated; the supervisor starts it again
    _wait_restarted(chaos_mesh, "postgres", pg_pid)
    done = _wait_for_end(jobs_api, job)
    assert done.state == pb.Job.STATE_SUCCEEDED, done
    follower.join(60)
    assert [e.sequence for e in follower.events] == list(range(1, len(follower.events) + 1))
    assert follower.events[-1].job_state == pb.Job.STATE_SUCCEEDED
    after = _restarts(chaos_mesh)
    assert after["postgres"] == before.get("postgres", 0) + 1
    assert all(after[name] == before.get(name, 0) for name in (*SERVICES, "worker")), after


def test_sigterm_hands_the_job_back_without_using_an_attempt(  # type: ignore[no-untyped-def]
    chaos_mesh: Mesh, rest, jobs_api, long_video: Path
) -> None:
    """A worker asked to stop finishes its stage and hands the job back; the next worker completes it as
    the same attempt (the supervisor starts the next worker, as a deployment's rollout would)."""
    _, job = _upload(rest, long_video)
    _wait_for_stage(jobs_api, job, pb.STAGE_SCENES, attempt=1)
    worker = chaos_mesh.part("worker").pid
    assert worker
    os.kill(worker, signal.SIGTERM)
    _wait_restarted(chaos_mesh, "worker", worker, timeout_s=120)
    done = _wait_for_end(jobs_api, job)
    assert done.state == pb.Job.STATE_SUCCEEDED and done.attempt == 1, done
    messages = [e.message for e in _events(jobs_api, job)]
    assert sum("handed back" in m for m in messages) == 1, messages
    assert not [m for m in messages if "WORKER_LOST" in m or "FAILED" in m], messages
