"""Building and running a gRPC server the same way in every service: error interceptor, health,
reflection, message limits, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection

from services.common import logs
from services.common.auth import Authenticator
from services.common.auth_interceptor import AuthInterceptor
from services.common.config import CommonSettings
from services.common.grpc_errors import ErrorInterceptor
from services.common.grpc_metrics import MetricsInterceptor
from services.common.grpc_tracing import server_interceptors as tracing_interceptors
from services.common.metrics import start_metrics_server
from services.common.request_limits import RequestLimiter
from services.common.tracing import configure_tracing

log = logging.getLogger(__name__)

#: What a servicer method is handed: gRPC's asyncio servicer context (servicers read the caller from the request
#: context instead, ``services.common.request_context.principal()``, and never its metadata).
Context = grpc.aio.ServicerContext[Any, Any]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A server that takes a large internal call (the search service: the index of a long video, thousands of
# scenes with a 512-d vector each, travels in one ReplaceVideoIndex) accepts what an internal client may send
# (services.common.grpc_client). Public requests are bounded by Envoy before they get here.
INTERNAL_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

SERVER_OPTIONS = [  # and the largest message received: run_server's max_message_bytes
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Internal clients ping idle connections (services.common.grpc_client): accept it instead of GOAWAY.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20000),
    # gRPC clients re-resolve DNS only when a connection ends: ending connections after 5 min lets them find
    # new replicas (no max_connection_age_grace: RPCs in flight, WatchJob streams included, finish).
    ("grpc.max_connection_age_ms", 300_000),
]


def configure_logging(level: str, service: str = "", log_format: str = "json") -> None:
    """The process's logging: JSON lines naming ``service`` and the bound request (``services.common.logs``),
    or plain text when ``log_format`` is ``text`` (``CLIPMIND_LOG_FORMAT``). Also the process's tracing, when the
    ``OTEL_*`` variables turn it on (``services.common.tracing``; off by default)."""
    logs.configure_logging(level, service, log_format)
    configure_tracing(service)


#: One shutdown hook: a plain function or a coroutine function, called with no arguments.
DrainHook = Callable[[], Awaitable[None]] | Callable[[], None]


async def run_server(
    *,
    name: str,
    host: str,
    port: int,
    register: Callable[[grpc.aio.Server], Sequence[str]],
    on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
    on_draining: Sequence[DrainHook] = (),
    grace_s: float = 30.0,
    component_health: Callable[[], Awaitable[dict[str, bool]]] | None = None,
    component_poll_s: float = 10.0,
    authenticator: Authenticator,
    optional_auth_methods: Sequence[str] = (),
    request_limits: RequestLimiter | None = None,
    reflection: bool = False,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    metrics_port: int | None = None,
    metrics_host: str = "",
) -> None:
    """Serve until SIGTERM/SIGINT. ``register`` adds the servicers and returns their full names.

    Every method but health and reflection needs a credential that ``authenticator`` accepts
    (``services.common.auth_interceptor``); ``optional_auth_methods`` (full method paths) may also be called
    without one; ``request_limits`` counts each user's calls against their rate limits. ``reflection``
    registers gRPC server reflection (open, like health), for grpcurl and the like.

    Metrics: every call is counted and timed (``services.common.grpc_metrics``, the outermost interceptor) and
    the process's metrics are served on ``metrics_host:metrics_port`` (``GET /metrics``; host empty: ``host``;
    port 0: not served) from the start of serving to the end of the ``on_stop`` hooks. A composition root that
    passes no ``metrics_port`` gets its process settings' (``CLIPMIND_METRICS_PORT``/``_HOST``), so no service
    is left without.

    ``component_health`` (optional) reports parts the process depends on, e.g. ``{"clipmind.model.clip_image":
    False}``; each becomes a health-check service name, SERVING or NOT_SERVING, refreshed periodically.

    Graceful shutdown, on the first SIGTERM/SIGINT:

    1. health turns NOT_SERVING for every service name (and stays so), so balancers stop sending;
    2. the ``on_draining`` hooks run, so long-lived streams (WatchJob) can be told to end;
    3. the server stops accepting RPCs and gives those in flight up to ``grace_s`` seconds to finish, then
       cancels the rest (a second signal cancels them at once);
    4. the ``on_stop`` callbacks close pools and clients.
    """
    # Metrics outermost (they count refusals too); then, when tracing is on, the OpenTelemetry server span (child
    # of the incoming ``traceparent`` metadata; refusals traced too); then authentication (internal methods want
    # the system identity); every call gets its request context (request id, trace, principal) bound for the
    # servicer and for onward calls, its traceparent re-bound to the server span (services.common.grpc_tracing).
    spans, span_binding = tracing_interceptors()
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(), *spans,
                      AuthInterceptor(authenticator, optional_methods=optional_auth_methods, limits=request_limits),
                      *span_binding, ErrorInterceptor()],
        options=[*SERVER_OPTIONS, ("grpc.max_receive_message_length", max_message_bytes)])
    service_names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        grpc_reflection.enable_server_reflection(
            [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             grpc_reflection.SERVICE_NAME],
            server,
        )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"{name}: cannot bind {host}:{port}")
    if metrics_port is None:
        process = CommonSettings()
        metrics_port, metrics_host = process.metrics_port, metrics_host or process.metrics_host
    stop_metrics = start_metrics_server(metrics_port, metrics_host or host)
    await server.start()
    for svc in ["", *service_names]:
        await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving %s on %s:%d", name, ", ".join(service_names), host, bound)

    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second signal while draining: no more grace

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    async def refresh_components() -> None:
        assert component_health is not None
        while not stop.is_set():
            try:
                for component, ok in (await component_health()).items():
                    serving = health_pb2.HealthCheckResponse
                    await health_servicer.set(component, serving.SERVING if ok else serving.NOT_SERVING)
            except Exception:
                log.exception("%s: component health check failed", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), component_poll_s)

    poller = asyncio.create_task(refresh_components()) if component_health else None
    await stop.wait()
    if poller is not None:
        poller.cancel()
    log.info("%s draining: NOT_SERVING, in-flight RPCs get up to %.0fs", name, grace_s)
    await health_servicer.enter_graceful_shutdown()
    await _run_hooks(name, "draining", on_draining)
    stopping = asyncio.create_task(server.stop(grace_s))
    hurried = asyncio.create_task(hurry.wait())
    await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        log.warning("%s: second signal, cancelling the RPCs still running", name)
        await server.stop(None)
        await stopping
    hurried.cancel()
    log.info("%s stopped serving", name)
    await _run_hooks(name, "closing", on_stop)
    if stop_metrics is not None:
        stop_metrics()


async def _run_hooks(name: str, stage: str, hooks: Sequence[DrainHook]) -> None:
    """Call each hook (awaiting coroutines); an error is logged and the rest still run."""
    for hook in hooks:
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception:  # shutting down: report, keep going
            log.exception("%s: error while %s", name, stage)
