"""OpenTelemetry tracing (services.common.tracing, services.common.grpc_tracing), in process: gRPC server and
client spans in one trace with the incoming ``traceparent``, the trace context through the queue payload into
the worker's ``job.run`` span, and tracing off by default.

The global tracer provider can be set once per process and this suite must not turn tracing on for the other
tests: spans go to a provider of this module, handed to the helpers explicitly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import request_context, tracing
from services.common.grpc_client import _StampUnaryUnary
from services.common.grpc_errors import ErrorInterceptor
from services.common.grpc_metrics import MetricsInterceptor
from services.common.grpc_tracing import client_interceptors, server_interceptors
from services.common.queue import TRACE_KWARG, ArqJobQueue, job_from_json, job_to_json, trace_kwargs
from services.pipeline import worker

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVOY_SPAN = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{ENVOY_SPAN}-01"


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def ids(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def hex_ids(span: ReadableSpan) -> tuple[str, str, str]:
    """(trace id, span id, parent span id) in hex."""
    assert span.context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else ""
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent


class BindLikeAuth(grpc.aio.ServerInterceptor):
    """What AuthInterceptor does with the request context (bind it from the metadata around the handler), without
    credentials: the binding interceptor after it must re-bind the traceparent to the server span."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        ctx = request_context.from_metadata(details.invocation_metadata, trust_caller=False)

        async def behavior(request: Any, context: Any) -> Any:
            token = request_context.set_context(ctx)
            try:
                return await handler.unary_unary(request, context)
            finally:
                request_context.reset(token)

        return grpc.unary_unary_rpc_method_handler(behavior)


async def serve(service: str, behavior: Any) -> tuple[grpc.aio.Server, str]:
    """An in-process server with run_server's interceptor composition (the authentication stand-in)."""
    spans, binding = server_interceptors(PROVIDER)
    assert spans and binding
    server = grpc.aio.server(interceptors=[MetricsInterceptor(), *spans, BindLikeAuth(), *binding,
                                           ErrorInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        service, {"Call": grpc.unary_unary_rpc_method_handler(behavior)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_a_call_through_two_servers_is_one_trace_under_the_incoming_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    seen: dict[str, str] = {}

    async def back(request: bytes, context: Any) -> bytes:
        seen["back"] = request_context.current().traceparent
        return b"back:" + request

    back_server, back_address = await serve("test.Back", back)
    # The internal channel: tracing interceptors first, then grpc_client's stamping of the request context.
    onward = grpc.aio.insecure_channel(back_address, interceptors=[*client_interceptors(PROVIDER),
                                                                   _StampUnaryUnary([], 5.0)])

    async def front(request: bytes, context: Any) -> bytes:
        seen["front"] = request_context.current().traceparent
        return await onward.unary_unary("/test.Back/Call")(request)

    front_server, front_address = await serve("test.Front", front)
    try:
        # The call as Envoy forwards it: the client's traceparent header as metadata.
        async with grpc.aio.insecure_channel(front_address) as channel:
            answer = await channel.unary_unary("/test.Front/Call")(
                b"hi", metadata=[("traceparent", INCOMING), ("x-request-id", "req-1")])
        assert answer == b"back:hi"
    finally:
        await onward.close()
        await front_server.stop(None)
        await back_server.stop(None)

    finished = {(span.name, span.kind): span for span in spans.get_finished_spans()}
    front_span = hex_ids(finished["/test.Front/Call", trace.SpanKind.SERVER])
    client_span = hex_ids(finished["/test.Back/Call", trace.SpanKind.CLIENT])
    back_span = hex_ids(finished["/test.Back/Call", trace.SpanKind.SERVER])
    assert {front_span[0], client_span[0], back_span[0]} == {TRACE_ID}
    assert front_span[2] == ENVOY_SPAN  # child of the span the request came with
    assert client_span[2] == front_span[1]  # the onward call, made inside the front handler
    assert back_span[2] == client_span[1]
    # The request context (logs, onward headers) names the server span that is active, in the same trace.
    assert ids(seen["front"]) == (TRACE_ID, front_span[1])
    assert ids(seen["back"]) == (TRACE_ID, back_span[1])


class FakePool:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def enqueue_job(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


async def test_the_job_payload_carries_the_enqueuing_span_and_the_job_span_is_its_child(
    spans: InMemorySpanExporter,
) -> None:
    pool = FakePool()
    queue = ArqJobQueue(pool)  # type: ignore[arg-type]
    job_id = uuid.uuid4()
    with tracing.tracer(PROVIDER).start_as_current_span("SubmitVideoJob") as submitting:
        await queue.enqueue(job_id, f"{job_id}:0")
    (args, kwargs), = pool.calls
    assert args[1] == str(job_id) and kwargs["_job_id"] == f"{job_id}:0"
    carried = job_from_json(job_to_json(kwargs[TRACE_KWARG]))  # what the worker reads back from Redis
    submit_ctx = submitting.get_span_context()
    assert ids(carried["traceparent"]) == (f"{submit_ctx.trace_id:032x}", f"{submit_ctx.span_id:016x}")

    with request_context.bind(request_id="job:0"), tracing.continued_span(
            "job.run", carried, attributes={"clipmind.job_id": str(job_id)}, provider=PROVIDER) as running:
        bound = request_context.current()
        run_ctx = running.get_span_context()
        assert ids(bound.traceparent) == (f"{run_ctx.trace_id:032x}", f"{run_ctx.span_id:016x}")
        assert bound.request_id == "job:0"
    job_span = next(s for s in spans.get_finished_spans() if s.name == "job.run")
    assert hex_ids(job_span) == (f"{submit_ctx.trace_id:032x}", f"{run_ctx.span_id:016x}",
                                 f"{submit_ctx.span_id:016x}")
    assert job_span.attributes is not None and job_span.attributes["clipmind.job_id"] == str(job_id)


async def test_without_a_span_the_payload_carries_the_bound_request_trace_or_nothing() -> None:
    with request_context.bind(traceparent=INCOMING, tracestate="k=v"):
        assert trace_kwargs() == {TRACE_KWARG: {"traceparent": INCOMING, "tracestate": "k=v"}}
    assert trace_kwargs() == {}  # nothing to carry: the payload is the old one
    pool = FakePool()
    await ArqJobQueue(pool).enqueue(uuid.uuid4(), "k:0")  # type: ignore[arg-type]
    assert TRACE_KWARG not in pool.calls[0][1]


class FakeRunner:
    def __init__(self) -> None:
        self.bound: list[request_context.RequestContext] = []

    async def run(self, job_id: uuid.UUID, key: str, *, stopping: Any) -> str:
        self.bound.append(request_context.current())
        return "done"


async def test_the_worker_runs_old_and_new_payloads_and_binds_the_carried_trace() -> None:
    runner = FakeRunner()
    job_id = str(uuid.uuid4())
    ctx = {"runner": runner, "stopping": None, "job_id": f"{job_id}:0"}
    assert await worker.process_video(ctx, job_id) == "done"  # a payload from before tracing
    assert await worker.process_video(ctx, job_id, trace={"traceparent": INCOMING}) == "done"
    assert await worker.process_video(ctx, job_id, trace={"traceparent": "garbage"}) == "done"
    old, new, bad = runner.bound
    assert old.request_id == new.request_id == f"{job_id}:0"
    assert old.traceparent == "" and bad.traceparent == ""
    # Tracing is off in this process: no span, but the run's logs and calls carry the upload's trace.
    assert new.traceparent == INCOMING


def test_context_from_carrier_refuses_what_is_not_a_w3c_context() -> None:
    for carried in (None, {}, {"traceparent": 42}, {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"},
                    "00-x"):
        assert tracing.context_from_carrier(carried) is None  # type: ignore[arg-type]
    parent = tracing.context_from_carrier({"traceparent": INCOMING, "tracestate": "k=v"})
    assert parent is not None
    span_context = trace.get_current_span(parent).get_span_context()
    assert (f"{span_context.trace_id:032x}", span_context.is_remote) == (TRACE_ID, True)


def test_tracing_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.exporter_names() == []
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) == []
    assert tracing.configure_tracing("search") is None
    assert tracing.configured_provider() is None
    # No interceptors at all on servers and channels, the API's no-op provider, nothing recorded.
    assert server_interceptors() == ([], [])
    assert client_interceptors() == []
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    with tracing.tracer().start_as_current_span("nothing") as span:
        assert not span.is_recording()
        assert tracing.carrier() == {}


def test_the_variables_turn_it_on_and_the_file_exporter_writes_json_lines(tmp_path: Path) -> None:
    """In a process of its own (the global provider is set once per process)."""
    out = tmp_path / "spans.jsonl"
    script = (
        "from services.common import tracing\n"
        "from services.common.grpc_tracing import client_interceptors, server_interceptors\n"
        "assert tracing.configure_tracing('search') is not None\n"
        "assert all(server_interceptors()) and client_interceptors()\n"
        "with tracing.tracer().start_as_current_span('outer'):\n"
        "    with tracing.tracer().start_as_current_span('inner', attributes={'clipmind.model': 'clip'}):\n"
        "        pass\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "file", "CLIPMIND_TRACE_FILE": str(out)}
    env.pop("OTEL_SDK_DISABLED", None)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])
    inner, outer = (json.loads(line) for line in out.read_text().splitlines())
    assert (inner["name"], outer["name"]) == ("inner", "outer")
    assert inner["trace_id"] == outer["trace_id"] and inner["parent_span_id"] == outer["span_id"]
    assert inner["service"] == "search" and inner["attributes"] == {"clipmind.model": "clip"}
