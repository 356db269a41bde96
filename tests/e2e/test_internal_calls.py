"""Services talk over their internal contracts: closed to the outside, authenticated, and degrading
gracefully when the service they call is away (search ↔ analytics, ingest ↔ pipeline)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2 as analytics_pb
from clipmind.analytics.internal.v1 import analytics_internal_service_pb2_grpc as analytics_grpc
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.pipeline.v1 import pipeline_service_pb2 as pipeline_pb
from clipmind.pipeline.v1 import pipeline_service_pb2_grpc as pipeline_grpc

from services.common.auth import SystemCredentials, signer_from
from services.launcher import Mesh
from tests.e2e.clients import rest_search, rest_upload, rich_status, wait_ready, watch_job
from tests.media import SceneSpec, make_scene_video

pytestmark = pytest.mark.e2e

LOG_SEARCHES = "/clipmind.analytics.internal.v1.AnalyticsInternalService/LogSearches"


def _system_authorization(mesh: Mesh) -> str:
    """What a service of this mesh sends: a system token signed with the state dir's keys."""
    signer = signer_from((mesh.state_dir / "jwt.keys").read_text().strip(), issuer="clipmind",
                         audience="clipmind-api")
    return SystemCredentials(signer).authorization()


def _logged(database_url: str, ids: list[str]) -> dict[str, tuple[int, int]]:
    """search id -> (rows in the search log, ranked results logged with it)."""
    async def read() -> dict[str, tuple[int, int]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT s.id::text AS id, count(DISTINCT s.log_time) AS n, "
                "(SELECT count(*) FROM analytics.search_results r WHERE r.search_id = s.id) AS results "
                "FROM analytics.searches s WHERE s.id = ANY($1::uuid[]) GROUP BY s.id",
                [uuid.UUID(i) for i in ids])
            return {r["id"]: (int(r["n"]), int(r["results"])) for r in rows}
        finally:
            await conn.close()
    return asyncio.run(read())


def _wait_logged(database_url: str, ids: list[str], timeout_s: float = 60) -> dict[str, tuple[int, int]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = _logged(database_url, ids)
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_internal_methods_are_not_routed_by_envoy(endpoints, channel) -> None:  # type: ignore[no-untyped-def]
    for path in (LOG_SEARCHES, "/v1/searches:log"):  # the gRPC path, and any REST-looking guess
        response = httpx.post(f"{endpoints.envoy_url}{path}", json={"searches": []}, timeout=10)
        assert response.status_code == 404, path
    # A gRPC client gets Envoy's 404 as a gRPC status (HTTP 200 + grpc-status 12, UNIMPLEMENTED).
    response = httpx.post(f"{endpoints.envoy_url}{LOG_SEARCHES}", content=b"\x00\x00\x00\x00\x00",
                          headers={"content-type": "application/grpc"}, timeout=10)
    assert response.headers.get("grpc-status") == "12"
    stub = analytics_grpc.AnalyticsInternalServiceStub(channel)  # native gRPC through the public port
    with pytest.raises(grpc.RpcError) as err:
        stub.LogSearches(analytics_pb.LogSearchesRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # what gRPC makes of Envoy's 404


def test_internal_methods_need_the_service_identity(mesh: Mesh, endpoints, credentials) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(endpoints.grpc["analytics"]) as direct:
        stub = analytics_grpc.AnalyticsInternalServiceStub(direct)
        for metadata, reason in (((), "SERVICE_IDENTITY_REQUIRED"),
                                 ((("authorization", "Bearer not-the-secret"),), "SERVICE_IDENTITY_INVALID"),
                                 ((("authorization", f"Bearer {credentials.admin}"),), "SERVICE_IDENTITY_INVALID")):
            with pytest.raises(grpc.RpcError) as err:
                stub.LogSearches(analytics_pb.LogSearchesRequest(), metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert rich_status(err.value)[0] == reason
        ok = stub.LogSearches(analytics_pb.LogSearchesRequest(), timeout=10,
                              metadata=(("authorization", _system_authorization(mesh)),))
        assert ok.logged_count == 0


@pytest.mark.chaos
def test_searches_made_while_analytics_is_down_are_logged_once_when_it_returns(  # type: ignore[no-untyped-def]
    processed_video: dict, mesh: Mesh, endpoints, rest: httpx.Client
) -> None:
    def timed_search(i: int) -> tuple[str, float]:
        started = time.perf_counter()
        body = rest_search(rest, f"a dog jumping into the water {i}", pageSize=3)
        return body["searchId"], time.perf_counter() - started

    up = [timed_search(i) for i in range(8)]
    logged_up = _wait_logged(endpoints.database_url, [i for i, _ in up])
    assert len(logged_up) == len(up) and all(n == 1 and results >= 1 for n, results in logged_up.values())

    analytics = mesh.part("analytics")
    analytics.stop()
    try:
        down = [timed_search(100 + i) for i in range(8)]
    finally:
        analytics.start()
    # Logging is off the search's path: with analytics away searches answer as fast as before (a loose bound;
    # bench/internal_calls.py measures it).
    assert statistics.median(t for _, t in down) < 3 * statistics.median(t for _, t in up) + 0.2
    ids = [i for i, _ in down]
    logged = _wait_logged(endpoints.database_url, ids)
    assert sorted(logged) == sorted(ids), "every search made while analytics was down reaches the log"
    assert all(n == 1 and results >= 1 for n, results in logged.values()), logged


@pytest.mark.chaos
def test_upload_while_the_pipeline_is_down_is_processed_once_when_it_returns(  # type: ignore[no-untyped-def]
    mesh: Mesh, endpoints, rest: httpx.Client, channel, tmp_path: Path
) -> None:
    path = make_scene_video(tmp_path / "while-down.mp4", (SceneSpec(2.0, "testsrc2"),), audio=False)
    pipeline = mesh.part("pipeline")
    pipeline.stop()
    try:
        response = rest_upload(rest, path, title="uploaded while the pipeline was down")
        assert response.status_code == 200, response.text
        video = response.json()
        assert video["state"] == "STATE_PENDING" and video["job"].startswith("jobs/")
    finally:
        pipeline.start()
    # The job exists once the ingest outbox has submitted it to the pipeline that is back.
    jobs = pipeline_grpc.PipelineServiceStub(channel)
    deadline = time.monotonic() + 90
    while True:
        try:
            jobs.GetJob(pipeline_pb.GetJobRequest(name=video["job"]), timeout=10)
            break
        except grpc.RpcError as err:
            assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), err
            assert time.monotonic() < deadline, "the job was never submitted"
            time.sleep(0.5)
    events = watch_job(channel, video["job"])
    assert events[-1].job_state == pipeline_pb.Job.STATE_SUCCEEDED
    assert wait_ready(channel, video["name"]).state == ingest_pb.Video.STATE_READY

    async def jobs_of_video() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(endpoints.database_url)
        try:
            return list(await conn.fetch(
                "SELECT j.id, (SELECT count(*) FROM pipeline.job_events e WHERE e.job_id = j.id AND "
                "e.message LIKE 'attempt %') AS attempts FROM pipeline.jobs j WHERE j.video_id = $1",
                uuid.UUID(video["name"].split("/")[1])))
        finally:
            await conn.close()
    (job,) = asyncio.run(jobs_of_video())
    assert f"jobs/{job['id']}" == video["job"] and job["attempts"] == 1


@pytest.mark.chaos
def test_the_worker_waits_for_a_stopped_search_service_and_indexes_once_when_it_returns(  # type: ignore[no-untyped-def]
    mesh: Mesh, endpoints, rest: httpx.Client, channel, tmp_path: Path
) -> None:
    path = make_scene_video(tmp_path / "index-later.mp4", audio=False)  # five scenes, no speech
    jobs = pipeline_grpc.PipelineServiceStub(channel)
    search = mesh.part("search")
    search.stop()
    try:
        response = rest_upload(rest, path, title="indexed after search returns")
        assert response.status_code == 200, response.text
        video = response.json()
        deadline = time.monotonic() + 300
        while True:  # the stages before INDEX need no search service
            job = jobs.GetJob(pipeline_pb.GetJobRequest(name=video["job"]), timeout=10)
            if job.stage == pipeline_pb.STAGE_INDEX:
                break
            assert job.state in (pipeline_pb.Job.STATE_QUEUED, pipeline_pb.Job.STATE_RUNNING), job
            assert time.monotonic() < deadline, "the job never reached INDEX"
            time.sleep(0.3)
        time.sleep(3)
        job = jobs.GetJob(pipeline_pb.GetJobRequest(name=video["job"]), timeout=10)
        assert (job.state, job.stage) == (pipeline_pb.Job.STATE_RUNNING, pipeline_pb.STAGE_INDEX), job  # waiting
    finally:
        search.start()
    events = watch_job(channel, video["job"])
    assert events[-1].job_state == pipeline_pb.Job.STATE_SUCCEEDED
    assert wait_ready(channel, video["name"]).state == ingest_pb.Video.STATE_READY

    async def counts() -> asyncpg.Record:
        conn = await asyncpg.connect(endpoints.database_url)
        try:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM search.clips WHERE video_id = $1) AS clips, "
                "(SELECT count(DISTINCT idx) FROM search.clips WHERE video_id = $1) AS distinct_clips, "
                "(SELECT count(*) FROM search.visual_vectors WHERE video_id = $1) AS visual, "
                "(SELECT count(*) FROM search.keyframes WHERE video_id = $1) AS keyframes, "
                "(SELECT count(DISTINCT k.clip_id) FROM search.keyframes k JOIN search.visual_vectors x ON x.id = k.id "
                " WHERE k.video_id = $1) AS embedded_clips, "
                "(SELECT scene_count FROM ingest.videos WHERE id = $1) AS scenes, "
                "(SELECT count(*) FROM pipeline.job_events e JOIN pipeline.jobs j ON j.id = e.job_id "
                " WHERE j.video_id = $1 AND e.message LIKE 'attempt %') AS attempts",
                uuid.UUID(video["name"].split("/")[1]))
            assert row is not None
            return row
        finally:
            await conn.close()
    row = asyncio.run(counts())
    assert row["clips"] == row["distinct_clips"] == row["scenes"] > 1, dict(row)  # no duplicates
    # every keyframe embedded once, every clip with its keyframes
    assert row["visual"] == row["keyframes"] and row["embedded_clips"] == row["clips"], dict(row)
    assert row["attempts"] == 1, dict(row)


def _leftovers(database_url: str, video_id: uuid.UUID) -> dict[str, int]:
    """What the pipeline and search still hold of a video: jobs, clips, vectors, and search's live copy."""
    async def read() -> dict[str, int]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM pipeline.jobs WHERE video_id = $1) AS jobs, "
                "(SELECT count(*) FROM search.clips WHERE video_id = $1) AS clips, "
                "(SELECT count(*) FROM search.transcript_vectors WHERE video_id = $1) + "
                "(SELECT count(*) FROM search.visual_vectors WHERE video_id = $1) AS vectors, "
                "(SELECT count(*) FROM search.videos WHERE id = $1 AND NOT deleted) AS live_facts", video_id)
            assert row is not None
            return dict(row)
        finally:
            await conn.close()
    return asyncio.run(read())


def test_a_deleted_videos_jobs_and_index_go_when_pipeline_and_search_return(  # type: ignore[no-untyped-def]
    mesh: Mesh, endpoints, rest: httpx.Client, channel, tmp_path: Path
) -> None:
    path = make_scene_video(tmp_path / "to-delete.mp4", (SceneSpec(2.0, "testsrc2"), SceneSpec(2.0, "smptebars")),
                            audio=False)
    response = rest_upload(rest, path, title="deleted while its neighbours are away")
    assert response.status_code == 200, response.text
    video = response.json()
    assert watch_job(channel, video["job"])[-1].job_state == pipeline_pb.Job.STATE_SUCCEEDED
    video_id = uuid.UUID(video["name"].split("/")[1])
    before = _leftovers(endpoints.database_url, video_id)
    assert before["jobs"] == 1 and before["clips"] >= 1 and before["live_facts"] == 1, before

    parts = [mesh.part("pipeline"), mesh.part("search")]
    for part in parts:
        part.stop()
    try:
        deleted = rest.delete(f"/v1/{video['name']}")
        assert deleted.status_code == 200, deleted.text  # ingest answers alone: the rest follows
        assert rest.get(f"/v1/{video['name']}").status_code == 404
        assert _leftovers(endpoints.database_url, video_id) == before  # nothing reached them yet
    finally:
        for part in parts:
            part.start()
    deadline = time.monotonic() + 90
    while (left := _leftovers(endpoints.database_url, video_id)) != {"jobs": 0, "clips": 0, "vectors": 0,
                                                                     "live_facts": 0}:
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.5)
