"""Server side of internal calls: who may call ``clipmind.<svc>.internal.*``, and the request context.

``InternalAuthInterceptor(token)`` goes on every server, first in the list (outermost), so that the
request context it binds is seen by everything inside, the error interceptor included:

    grpc.aio.server(interceptors=[InternalAuthInterceptor(token), ErrorInterceptor()])

* **Service identity.** A method whose package has an ``internal`` segment
  (``/clipmind.search.internal.v1.SearchInternalService/ReplaceVideoIndex``) is for other services only:
  Envoy never routes it, and this interceptor wants ``authorization: Bearer <CLIPMIND_INTERNAL_TOKEN>``
  (compared in constant time). Without it the call ends UNAUTHENTICATED with an ``ErrorInfo`` reason
  ``SERVICE_IDENTITY_REQUIRED``; with another value, ``SERVICE_IDENTITY_INVALID``; when this server has no
  token configured, every internal call is refused with ``INTERNAL_CALLS_DISABLED``. A refused request is
  not even deserialized. Public methods pass untouched: user authentication is another interceptor's job.
* **Request context.** For every call it binds ``services.common.request_context`` (request id from
  ``x-request-id`` or a new one, W3C ``traceparent``/``tracestate``, and the calling service from
  ``x-clipmind-caller`` on authenticated internal calls) for as long as the handler runs, so logs and the
  internal calls the handler makes (``services.common.grpc_client``) carry them. It is bound inside the
  wrapped handler behaviour, which runs in the RPC's own task, so it cannot leak into other calls.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from services.common import request_context
from services.common.errors import ClipMindError, Unauthenticated
from services.common.grpc_errors import STATUS_DETAILS_KEY, to_rpc_status
from services.common.request_context import RequestContext

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"


def is_internal_method(method: str) -> bool:
    """True for ``/pkg.internal.v1.Service/Method``: a package segment (not the service name) is ``internal``."""
    service = method.lstrip("/").split("/", 1)[0]
    return "internal" in service.split(".")[:-1]


class InternalAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the service identity on internal methods and binds the request context on every method."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata: Sequence[tuple[str, str | bytes]] = handler_call_details.invocation_metadata or ()
        internal = is_internal_method(method)
        if internal:
            refusal = self.check(metadata, method)
            if refusal is not None:
                return _refusing(handler, refusal, method)
        ctx = request_context.from_metadata(metadata, trust_caller=internal)
        return _binding(handler, ctx)

    def check(self, metadata: Sequence[tuple[str, str | bytes]], method: str) -> ClipMindError | None:
        """Why an internal call with this metadata is refused, or None if it proves the service identity."""
        if not self._token:
            return Unauthenticated(
                "internal calls are disabled on this server: CLIPMIND_INTERNAL_TOKEN is not set",
                reason="INTERNAL_CALLS_DISABLED", metadata={"method": method},
            )
        values = [value for key, value in metadata if key == AUTHORIZATION_KEY]
        if not values:
            return Unauthenticated(
                "this method is for ClipMind services only: send authorization: Bearer <CLIPMIND_INTERNAL_TOKEN>",
                reason="SERVICE_IDENTITY_REQUIRED", metadata={"method": method},
            )
        value = values[0]
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
        scheme, _, credential = raw.strip().partition(b" ")
        # compare_digest runs in time independent of where the values differ.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self._token):
            return Unauthenticated(
                "the service identity is not valid (CLIPMIND_INTERNAL_TOKEN differs between services?)",
                reason="SERVICE_IDENTITY_INVALID", metadata={"method": method},
            )
        return None


def _handler_kind(handler: grpc.RpcMethodHandler) -> tuple[Callable[..., grpc.RpcMethodHandler], Any, bool]:
    """(constructor of the same kind of handler, its behaviour, whether it streams responses)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler, handler.unary_unary, False
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler, handler.stream_unary, False
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler, handler.unary_stream, True
    return grpc.stream_stream_rpc_method_handler, handler.stream_stream, True


def _refusing(handler: grpc.RpcMethodHandler, refusal: ClipMindError, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that aborts with ``refusal`` (the request is left as raw bytes)."""
    make, _behavior, _streams = _handler_kind(handler)
    status = to_rpc_status(refusal)
    trailer = ((STATUS_DETAILS_KEY, status.SerializeToString()),)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        log.warning("refused internal call %s from %s: %s", method, context.peer(), refusal.reason)
        await context.abort(grpc.StatusCode[refusal.code], refusal.message, trailing_metadata=trailer)

    return make(refuse, request_deserializer=None, response_serializer=handler.response_serializer)


def _binding(handler: grpc.RpcMethodHandler, ctx: RequestContext) -> grpc.RpcMethodHandler:
    """The same handler, with ``ctx`` bound while its behaviour runs."""
    make, behavior, streams = _handler_kind(handler)
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if streams:
        return make(_bind_stream(behavior, ctx), **kwargs)
    return make(_bind_unary(behavior, ctx), **kwargs)


def _bind_unary(behavior: Callable[..., Any], ctx: RequestContext) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = request_context.set_context(ctx)
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        finally:
            request_context.reset(token)

    return wrapper


def _bind_stream(behavior: Callable[..., Any], ctx: RequestContext) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        token = request_context.set_context(ctx)
        try:
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):  # a handler that writes with context.write()
                await result
            else:  # a plain iterator
                for item in result:
                    yield item
        finally:
            # An abandoned generator may be closed later from another context; the RPC's task ends anyway.
            with contextlib.suppress(ValueError):
                request_context.reset(token)

    return wrapper
