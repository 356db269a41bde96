"""Every process of the mesh serves Prometheus metrics (``clipmind up`` lists the URLs): after a flow (the session's
video uploaded over REST, watched, processed; a search), scraping each one shows the RPCs it served, the worker's
stages for that video, its queue depth and job counts, and every database pool's use."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.queue import QUEUE_NAME
from tests.e2e.clients import grpc_search, rest_search

pytestmark = pytest.mark.e2e

PROCESSES = ("ingest", "pipeline", "search", "analytics", "identity", "worker")
# The schema each process's pool works in (the worker is the pipeline's).
POOLS = {"ingest": "ingest", "pipeline": "pipeline", "search": "search", "analytics": "analytics",
         "identity": "identity", "worker": "pipeline"}
STAGES = ("PROBE", "THUMBNAIL", "SCENES", "TRANSCRIPT", "EMBED", "INDEX")

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    """Every sample of one process, by sample name (``…_total``, ``…_count``, ``…_bucket``)."""
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[s.name].append((dict(s.labels), s.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """``check()`` turned true within the time (the worker refreshes its gauges every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.fixture(scope="module")
def flow(processed_video: dict, rest: httpx.Client, channel: grpc.Channel) -> dict:
    """The session's processed video, then one search over REST and one over gRPC."""
    rest_search(rest, "cooking vegetables in the kitchen")
    grpc_search(channel, "a dog jumping into the water")
    return processed_video


def test_every_process_lists_a_metrics_url(endpoints) -> None:  # type: ignore[no-untyped-def]
    assert set(endpoints.metrics) == set(PROCESSES)
    ports = {url.rsplit(":", 1)[1] for url in endpoints.metrics.values()}
    assert len(ports) == len(PROCESSES)  # one port each


@pytest.mark.parametrize("process", PROCESSES)
def test_every_process_serves_its_pool_gauges(endpoints, flow: dict, process: str) -> None:  # type: ignore[no-untyped-def]
    samples = scrape(endpoints.metrics[process])
    pool = POOLS[process]
    assert value(samples, "clipmind_db_pool_max_size", pool=pool) >= 1
    assert value(samples, "clipmind_db_pool_size", pool=pool) >= 0
    assert "clipmind_db_pool_in_use" in samples
    assert "process_cpu_seconds_total" in samples  # prometheus_client's process collector


@pytest.mark.parametrize("process", ["ingest", "pipeline", "search", "analytics", "identity"])
def test_servers_count_health_checks(endpoints, flow: dict, process: str) -> None:  # type: ignore[no-untyped-def]
    """The launcher's readiness probes are RPCs like any other: every server counted them."""
    samples = scrape(endpoints.metrics[process])
    assert value(samples, "clipmind_grpc_server_requests_total", service="grpc.health.v1.Health", method="Check",
                 code="OK") >= 1


def test_request_counters_show_the_rpcs_of_the_flow(endpoints, flow: dict) -> None:  # type: ignore[no-untyped-def]
    ingest = scrape(endpoints.metrics["ingest"])
    for method in ("CreateUpload", "WriteUpload", "CompleteUpload", "GetVideo"):
        assert value(ingest, "clipmind_grpc_server_requests_total", service="clipmind.ingest.v1.IngestService",
                     method=method, code="OK") >= 1, method
    assert value(ingest, "clipmind_grpc_server_request_duration_seconds_count",
                 service="clipmind.ingest.v1.IngestService", method="CompleteUpload") >= 1

    search = scrape(endpoints.metrics["search"])
    assert value(search, "clipmind_grpc_server_requests_total", service="clipmind.search.v1.SearchService",
                 method="Search", code="OK") >= 2
    latency = value(search, "clipmind_grpc_server_request_duration_seconds_sum",
                    service="clipmind.search.v1.SearchService", method="Search")
    assert latency > 0
    # the worker wrote the video's index through search's internal API
    assert value(search, "clipmind_grpc_server_requests_total", method="ReplaceVideoIndex", code="OK") >= 1
    assert value(search, "clipmind_search_cache_lookups_total") >= 2

    pipeline = scrape(endpoints.metrics["pipeline"])
    assert value(pipeline, "clipmind_grpc_server_requests_total", service="clipmind.pipeline.v1.PipelineService",
                 method="WatchJob", code="OK") >= 1
    assert eventually(lambda: value(scrape(endpoints.metrics["pipeline"]), "clipmind_grpc_server_streams_in_flight",
                                    method="WatchJob") == 0)  # every watch of the flow ended

    identity = scrape(endpoints.metrics["identity"])  # the API key the suite uses, resolved for the services
    assert value(identity, "clipmind_grpc_server_requests_total", method="AuthenticateApiKey", code="OK") >= 1


def test_worker_shows_the_stages_of_the_processed_video(endpoints, flow: dict) -> None:  # type: ignore[no-untyped-def]
    worker = scrape(endpoints.metrics["worker"])
    assert value(worker, "clipmind_worker_stage_duration_seconds_count", stage="SCENES", outcome="completed") >= 1
    assert value(worker, "clipmind_worker_stage_duration_seconds_sum", stage="SCENES") > 0
    for stage in STAGES:  # every stage ended one way or the other
        assert value(worker, "clipmind_worker_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert value(worker, "clipmind_worker_stage_duration_seconds_bucket", stage="SCENES", le="+Inf") >= 1
    assert value(worker, "clipmind_worker_attempts_total", outcome="succeeded") >= 1
    assert value(worker, "clipmind_worker_attempt_duration_seconds_count", outcome="succeeded") >= 1
    # the worker's models are asked through Triton: its client timed them, and its breaker is closed
    assert value(worker, "clipmind_triton_request_duration_seconds_count", outcome="ok") >= 1
    assert value(worker, "clipmind_triton_circuit_state", state="closed") >= 1


def test_worker_gauges_show_queue_depth_and_jobs_by_state(endpoints, flow: dict) -> None:  # type: ignore[no-untyped-def]
    url = endpoints.metrics["worker"]
    assert eventually(lambda: value(scrape(url), "clipmind_worker_jobs", state="SUCCEEDED") >= 1)
    worker = scrape(url)
    depth = [v for labels, v in worker.get("clipmind_worker_queue_depth", []) if labels.get("queue") == QUEUE_NAME]
    assert len(depth) == 1 and depth[0] >= 0
    states = {labels["state"] for labels, _ in worker["clipmind_worker_jobs"]}
    assert {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"} <= states
    assert [v >= 0 for _, v in worker["clipmind_worker_oldest_run_seconds"]] == [True]
