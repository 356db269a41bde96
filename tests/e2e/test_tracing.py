"""OpenTelemetry tracing through the mesh (issue 12): one search through Envoy is one trace, under the client's own
``traceparent``, across search, identity and the Triton request; one upload's job, run by the worker, is a
``job.run`` span in the upload's trace (the context goes through ingest's outbox into SubmitVideoJob and, in the
queue payload, to the worker).

A mesh of its own with tracing on (``OTEL_TRACES_EXPORTER=file``): every process appends its spans, one JSON line
each, to ``CLIPMIND_TRACE_FILE`` (services/common/tracing.py). Envoy has no tracing of its own here: its hop is the
``traceparent`` header it forwards as gRPC metadata, so the search service's server span is a child of the
client's span id."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from clipmind.search.v1 import search_service_pb2 as search_pb
from clipmind.search.v1 import search_service_pb2_grpc as search_grpc

from services.launcher import Mesh
from tests.e2e.clients import authenticated_channel, grpc_upload, watch_job
from tests.e2e.conftest import MODEL_ENV, mesh_user_key, running_mesh
from tests.media import make_scene_video

pytestmark = pytest.mark.e2e

SEARCH = "/clipmind.search.v1.SearchService/Search"
UPLOAD = "/clipmind.ingest.v1.IngestService/UploadVideo"
SUBMIT_SUFFIX = "/SubmitVideoJob"
AUTHENTICATE_KEY = "/clipmind.identity.internal.v1.IdentityInternalService/AuthenticateApiKey"


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces") / "spans.jsonl"


@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory: pytest.TempPathFactory, trace_file: Path) -> Iterator[Mesh]:
    env = {**MODEL_ENV, "OTEL_TRACES_EXPORTER": "file", "CLIPMIND_TRACE_FILE": str(trace_file),
           "CLIPMIND_ALLOW_RANDOM_WEIGHTS_IN_RANKING": "true"}
    with running_mesh(tmp_path_factory.mktemp("traced-mesh"), env) as launched:
        yield launched


def read_spans(path: Path) -> list[dict[str, Any]]:
    spans = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
        try:
            spans.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return spans


def wait_for_spans(path: Path, found: Callable[[list[dict[str, Any]]], bool],
                   timeout_s: float = 30) -> list[dict[str, Any]]:
    """The spans of the file once ``found`` says they are all there (spans are written as they end)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = read_spans(path)
        if found(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.3)


def jpeg(colour: tuple[int, int, int]) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((224, 224, 3), colour, np.uint8))
    assert ok
    return data.tobytes()


def test_a_search_through_envoy_is_one_trace_across_search_identity_and_triton(
    traced_mesh: Mesh, trace_file: Path,
) -> None:
    key = mesh_user_key(traced_mesh, f"trace-{secrets.token_hex(6)}@example.com")  # unseen: search asks identity
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    channel = authenticated_channel(traced_mesh.endpoints.envoy_url.removeprefix("http://"), key)
    try:
        search_grpc.SearchServiceStub(channel).Search(
            search_pb.SearchRequest(image=jpeg((40, 160, 60)), page_size=5), timeout=60,
            metadata=[("traceparent", f"00-{trace_id}-{client_span}-01")])
    finally:
        channel.close()

    def complete(spans: list[dict[str, Any]]) -> bool:
        mine = [s for s in spans if s["trace_id"] == trace_id]
        return any(s["name"] == SEARCH and s["kind"] == "SERVER" for s in mine) and any(
            s["name"] == "triton.infer" for s in mine)

    spans = [s for s in wait_for_spans(trace_file, complete) if s["trace_id"] == trace_id]
    names = {(s["service"], s["name"], s["kind"]) for s in spans}
    [served] = [s for s in spans if s["name"] == SEARCH and s["kind"] == "SERVER"]
    assert served["service"] == "search" and served["parent_span_id"] == client_span, served  # Envoy's hop
    assert ("search", AUTHENTICATE_KEY, "CLIENT") in names, names
    assert ("identity", AUTHENTICATE_KEY, "SERVER") in names, names
    inferred = [s for s in spans if s["name"] == "triton.infer"]
    assert inferred and all(s["service"] == "search" for s in inferred), names
    assert all(s["attributes"].get("clipmind.model") for s in inferred)
    # Every span of the trace hangs off another span of it, or off the client's span.
    ids = {s["span_id"] for s in spans} | {client_span}
    assert all(s["parent_span_id"] in ids for s in spans), spans


def test_an_uploads_job_runs_in_the_worker_under_the_uploads_trace(
    traced_mesh: Mesh, trace_file: Path, tmp_path: Path,
) -> None:
    key = mesh_user_key(traced_mesh, f"upload-{secrets.token_hex(6)}@example.com")
    channel = authenticated_channel(traced_mesh.endpoints.envoy_url.removeprefix("http://"), key)
    try:
        uploaded = grpc_upload(channel, make_scene_video(tmp_path / "traced.mp4"))
        watch_job(channel, uploaded.job)
    finally:
        channel.close()

    def uploads(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in spans if s["name"] == UPLOAD and s["kind"] == "SERVER"]

    def complete(spans: list[dict[str, Any]]) -> bool:
        traces = {s["trace_id"] for s in uploads(spans)}
        return any(s["name"] == "job.run" and s["trace_id"] in traces for s in spans)

    spans = wait_for_spans(trace_file, complete, timeout_s=60)
    [upload] = uploads(spans)  # the only upload of this mesh
    assert upload["service"] == "ingest"
    trace = [s for s in spans if s["trace_id"] == upload["trace_id"]]
    by_id = {s["span_id"]: s for s in trace}
    [job] = [s for s in trace if s["name"] == "job.run"]
    assert job["service"] == "worker" and job["attributes"]["clipmind.job_id"], job
    # job.run <- SubmitVideoJob (pipeline, which enqueued) <- ingest's call from its outbox relay <- the upload.
    submitted = by_id[job["parent_span_id"]]
    assert submitted["service"] == "pipeline" and submitted["name"].endswith(SUBMIT_SUFFIX), submitted
    chain = []
    span = submitted
    while span["parent_span_id"] in by_id:
        span = by_id[span["parent_span_id"]]
        chain.append((span["service"], span["name"]))
    assert chain[-1] == ("ingest", UPLOAD), chain
    assert ("ingest", "outbox.deliver") in chain, chain
    # The worker's own calls (ingest, search, Triton) are in the upload's trace too, under the job span.
    under_job = [s for s in trace if s["service"] == "worker" and s["span_id"] != job["span_id"]]
    assert under_job, [s["name"] for s in trace]
