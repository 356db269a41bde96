"""OpenTelemetry tracing: off by default, turned on by the standard ``OTEL_*`` variables.

    configure_tracing(settings.service_name)   # every process, from grpc_server.configure_logging

**Off** (``OTEL_TRACES_EXPORTER`` unset, empty or ``none``, or ``OTEL_SDK_DISABLED=true``): no tracer provider
is set, the OpenTelemetry API stays the no-op one, the gRPC servers and channels get no tracing interceptors
(``services.common.grpc_tracing``) and nothing is exported. The W3C ``traceparent`` a request brings still
travels as before (``services.common.request_context``), into the queue payload too, so logs keep one trace id.

**On**: ``OTEL_TRACES_EXPORTER`` names one or more exporters, comma-separated:

* ``otlp`` — OTLP over gRPC, or HTTP when ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL=http/protobuf``; endpoint,
  headers, timeouts and so on from the standard ``OTEL_EXPORTER_OTLP_*`` variables (batched);
* ``console`` — each span as JSON on stdout (batched);
* ``file`` — one JSON line per span appended to the file ``CLIPMIND_TRACE_FILE`` (written as each span ends;
  several processes may share the file). Meant for tests and debugging.

The resource's ``service.name`` is the process's (``ingest``, ``worker``, ...), or ``OTEL_SERVICE_NAME``; the
sampler comes from ``OTEL_TRACES_SAMPLER``/``_ARG`` (default: parent-based, always on), propagation is W3C trace
context. What is traced: every gRPC call served and made (the official instrumentation), each Triton inference
request (``triton.infer``), each outbox delivery (``outbox.deliver``) and each queued job run by the worker
(``job.run``), whose parent is the context carried in the job's queue payload (:func:`carrier`).

The request context's ``traceparent`` follows the active span (:func:`bind_active_span`, :func:`continued_span`),
so log lines' ``trace_id``/``span_id`` name the span they were written in.

No grpc import here: the queue adapter (imported by domain modules) uses this module; the gRPC interceptors
are in ``services.common.grpc_tracing``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common import request_context

__all__ = [
    "TRACES_EXPORTER_ENV", "TRACE_FILE_ENV", "bind_active_span", "carrier", "configure_tracing",
    "configured_provider", "context_from_carrier", "continued_span", "exporter_names", "tracer",
]

log = logging.getLogger(__name__)

TRACES_EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
TRACE_FILE_ENV = "CLIPMIND_TRACE_FILE"
TRACER_NAME = "clipmind"

_W3C = TraceContextTextMapPropagator()
_provider: Any = None  # the SDK TracerProvider this process set up; None while tracing is off
_lock = threading.Lock()


def exporter_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for; empty when tracing is off (the default)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get(TRACES_EXPORTER_ENV, "").split(",")]
    return [n for n in names if n and n != "none"]


def configured_provider() -> Any:
    """The tracer provider :func:`configure_tracing` set (an SDK ``TracerProvider``), or None when off."""
    return _provider


def configure_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> Any:
    """Set the global tracer provider when the ``OTEL_*`` variables turn tracing on; returns it, or None when
    tracing is off (nothing is set up then). Once per process: later calls return the first provider."""
    global _provider
    env = os.environ if environ is None else environ
    names = exporter_names(env)
    with _lock:
        if _provider is not None or not names:
            return _provider
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        name = env.get("OTEL_SERVICE_NAME") or service_name or "clipmind"
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        added = []
        for exporter in names:
            if exporter == "otlp":
                provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
            elif exporter == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            elif exporter == "file":
                path = env.get(TRACE_FILE_ENV, "")
                if not path:
                    log.warning("%s=file but %s is not set: no file exporter", TRACES_EXPORTER_ENV, TRACE_FILE_ENV)
                    continue
                # duck-typed SpanExporter (the SDK is imported only when tracing is on)
                provider.add_span_processor(SimpleSpanProcessor(cast(Any, JsonLinesSpanExporter(path))))
            else:
                log.warning("%s: unknown trace exporter %r ignored (otlp, console, file)", TRACES_EXPORTER_ENV,
                            exporter)
                continue
            added.append(exporter)
        if not added:
            return None
        trace.set_tracer_provider(provider)
        _provider = provider
        log.info("tracing on: service.name=%s, exporters %s", name, ", ".join(added))
        return provider


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol.strip().lower().startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


class JsonLinesSpanExporter:
    """Appends one JSON object per ended span to ``path`` (a whole line per ``write``, ``O_APPEND``, so the
    processes of a mesh can share one file): name, trace/span/parent ids (hex), kind, service, times (ns),
    status and attributes."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            context, parent = span.context, span.parent
            line = {
                "name": span.name,
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_span_id": f"{parent.span_id:016x}" if parent is not None else "",
                "kind": span.kind.name,
                "service": span.resource.attributes.get("service.name", ""),
                "start_ns": span.start_time,
                "end_ns": span.end_time,
                "status": span.status.status_code.name,
                "attributes": dict(span.attributes or {}),
            }
            try:
                os.write(self._fd, (json.dumps(line, default=str) + "\n").encode())
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def tracer(provider: Any = None) -> trace.Tracer:
    """ClipMind's tracer: from ``provider`` when given (tests), else the global one (no-op while off)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=provider)


def _traceparent_of(span: Span) -> tuple[str, str] | None:
    """(traceparent, tracestate) of ``span``; None for an invalid (no-op) span."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    headers: dict[str, str] = {}
    _W3C.inject(headers, context=trace.set_span_in_context(span))
    return headers.get("traceparent", ""), headers.get("tracestate", "")


def carrier() -> dict[str, str]:
    """The W3C trace context to send along with work another process picks up (a queue payload): the active
    span's when there is one, else the request context's ``traceparent``/``tracestate`` (tracing off: the
    context the request came with); empty when there is neither."""
    current = _traceparent_of(trace.get_current_span())
    if current is None:
        ctx = request_context.current()
        current = (ctx.traceparent, ctx.tracestate) if ctx.traceparent else None
    if current is None:
        return {}
    traceparent, tracestate = current
    return {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}


def context_from_carrier(carried: Mapping[str, Any] | None) -> Context | None:
    """The OpenTelemetry context whose remote parent is the carried one; None for a missing or malformed one
    (old payloads carry nothing: their work starts a new trace)."""
    if not isinstance(carried, Mapping):
        return None
    traceparent = carried.get("traceparent")
    if not isinstance(traceparent, str) or not request_context.valid_traceparent(traceparent):
        return None
    headers = {"traceparent": traceparent}
    tracestate = carried.get("tracestate")
    if isinstance(tracestate, str) and tracestate:
        headers["tracestate"] = tracestate
    return _W3C.extract(headers)


@contextmanager
def within_remote(traceparent: str, tracestate: str = "") -> Iterator[None]:
    """Make the caller's span (an incoming ``traceparent``) the current parent for the block: work a server does
    before its own span starts (authenticating a call, which may ask identity) stays in the caller's trace. No-op
    for an empty or malformed one, and free while tracing is off."""
    parent = context_from_carrier({"traceparent": traceparent, "tracestate": tracestate} if traceparent else None)
    if parent is None:
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def bind_active_span() -> Iterator[None]:
    """Bind the request context's ``traceparent``/``tracestate`` to the active span for the block, so log lines
    and calls that read the request context name that span; nothing changes when no span is active."""
    current = _traceparent_of(trace.get_current_span())
    if current is None:
        yield
        return
    with request_context.bind(traceparent=current[0], tracestate=current[1]):
        yield


@contextmanager
def continued_span(
    name: str, carried: Mapping[str, Any] | None, *, attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.CONSUMER, provider: Any = None,
) -> Iterator[Span]:
    """A span ``name`` whose parent is the carried W3C context (a new trace without one), current for the block,
    with the request context's trace bound to it. While tracing is off the span is the no-op one and the
    request context gets the carried ``traceparent``, so the block's logs and calls still carry the trace."""
    parent = context_from_carrier(carried)
    with tracer(provider).start_as_current_span(name, context=parent, kind=kind,
                                                attributes=dict(attributes or {})) as span:
        current = _traceparent_of(span)
        if current is None and parent is not None:
            current = _traceparent_of(trace.get_current_span(parent))
        if current is None:
            yield span
            return
        with request_context.bind(traceparent=current[0], tracestate=current[1]):
            yield span
