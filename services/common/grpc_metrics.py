"""Server side of the gRPC metrics: one interceptor, outermost on every server (``run_server``).

    grpc.aio.server(interceptors=[MetricsInterceptor(), AuthInterceptor(...), ErrorInterceptor()])

Outermost, so it also counts the calls that authentication or the request limits refuse (UNAUTHENTICATED,
RESOURCE_EXHAUSTED) and the statuses the error interceptor makes of exceptions. Each call that reaches a
registered method counts once in ``clipmind_grpc_server_requests_total{service, method, code}`` and
``clipmind_grpc_server_request_duration_seconds{service, method}`` when it ends, whichever way it ends (an
answer, an abort, an exception, a cancelled stream), with the status code the handler ended it with. Streaming
calls are counted in ``clipmind_grpc_server_streams_in_flight`` while they are open. A path that matches no
registered method gets no handler here and no labels, so label values stay bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from services.common.grpc_handlers import stream_results
from services.common.metrics import GRPC_LATENCY, GRPC_REQUESTS, GRPC_STREAMS


def split_method(path: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    service, _, method = path.lstrip("/").partition("/")
    return service, method


def status_name(context: grpc.aio.ServicerContext[Any, Any], failure: BaseException | None = None) -> str:
    """The status code a call ends with, by name: the one the handler set or aborted with; else CANCELLED for a
    call cancelled under it (the client went away, its deadline passed), UNKNOWN for an exception that escaped
    (gRPC's own answer to it), OK for a handler that returned."""
    if isinstance(failure, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if code is not None:  # some grpc versions keep the raw integer
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "OK" if failure is None else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call to a registered method; tracks open streams (see the module doc)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = split_method(handler_call_details.method)
        arrived = time.perf_counter()
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, service, method, arrived, stream=False), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, service, method, arrived, stream=True), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, service, method, arrived), **kwargs)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(handler.stream_stream, service, method, arrived), **kwargs)
        return handler


class _Call:
    """One call being measured: counted in the in-flight gauge while open (streams), observed once at its end."""

    def __init__(self, service: str, method: str, arrived: float, *, stream: bool) -> None:
        self.labels, self.arrived, self.stream = (service, method), arrived, stream
        if stream:
            GRPC_STREAMS.labels(*self.labels).inc()

    def end(self, context: grpc.aio.ServicerContext[Any, Any], failure: BaseException | None) -> None:
        GRPC_REQUESTS.labels(*self.labels, status_name(context, failure)).inc()
        GRPC_LATENCY.labels(*self.labels).observe(time.perf_counter() - self.arrived)
        if self.stream:
            GRPC_STREAMS.labels(*self.labels).dec()


def _unary(behavior: Callable[..., Any], service: str, method: str, arrived: float,
           *, stream: bool) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call, failure = _Call(service, method, arrived, stream=stream), None
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            failure = exc
            raise
        finally:
            call.end(context, failure)

    return wrapper


def _streaming(behavior: Callable[..., Any], service: str, method: str,
               arrived: float) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        call, failure = _Call(service, method, arrived, stream=True), None
        try:
            async for item in stream_results(behavior(request, context)):
                yield item
        except BaseException as exc:
            failure = exc
            raise
        finally:
            call.end(context, failure)

    return wrapper
