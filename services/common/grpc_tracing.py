"""Tracing of gRPC calls (``services.common.tracing``): the official OpenTelemetry aio interceptors, only while
tracing is on (off: empty lists, so servers and channels run exactly as without tracing).

Server (``services.common.grpc_server.run_server``)::

    spans, binding = server_interceptors()
    grpc.aio.server(interceptors=[MetricsInterceptor(), *spans, AuthInterceptor(...), *binding, ErrorInterceptor()])

``spans`` (the OpenTelemetry server interceptor) starts a SERVER span per call, child of the ``traceparent``
metadata the call brings (Envoy forwards the client's header as metadata); it comes before authentication so
refused calls are traced too. ``binding`` runs inside authentication, which binds the request context from the
metadata: it binds the context's ``traceparent`` again, to the server span, so the handler's logs and its
onward calls name the span that is really active.

Client (``services.common.grpc_client.InternalChannels``): ``client_interceptors()`` go first on every channel;
each call gets a CLIENT span and its ``traceparent`` metadata, which the request-context stamping then leaves
alone (headers already set win).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor

from services.common import tracing
from services.common.grpc_handlers import handler_kind, stream_results

__all__ = ["BindSpanInterceptor", "client_interceptors", "server_interceptors"]


ServerInterceptors = list[grpc.aio.ServerInterceptor]


def server_interceptors(provider: Any = None) -> tuple[ServerInterceptors, ServerInterceptors]:
    """(span interceptors: before authentication, binding interceptors: after it); both empty while tracing is
    off. ``provider``: a tracer provider to use instead of the configured one (tests)."""
    provider = provider if provider is not None else tracing.configured_provider()
    if provider is None:
        return [], []
    return [aio_server_interceptor(tracer_provider=provider)], [BindSpanInterceptor()]


def client_interceptors(provider: Any = None) -> list[grpc.aio.ClientInterceptor]:
    """The OpenTelemetry client interceptors (unary and streaming), or none while tracing is off."""
    provider = provider if provider is not None else tracing.configured_provider()
    if provider is None:
        return []
    return list(aio_client_interceptors(tracer_provider=provider))


class BindSpanInterceptor(grpc.aio.ServerInterceptor):
    """Binds the request context's ``traceparent`` to the active (server) span while the handler runs."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        make, behavior, streams = handler_kind(handler)
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if streams:
            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                with tracing.bind_active_span():
                    async for item in stream_results(behavior(request, context)):
                        yield item

            return make(stream, **kwargs)

        async def unary(request: Any, context: Any) -> Any:
            with tracing.bind_active_span():
                result = behavior(request, context)
                return await result if isinstance(result, Awaitable) else result

        return make(unary, **kwargs)
