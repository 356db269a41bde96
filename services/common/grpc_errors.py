"""The one gRPC error model: domain exceptions → ``google.rpc.Status`` with ErrorInfo and BadRequest.

Installed on every server as an interceptor. A ``ClipMindError`` becomes its own status code with an
``ErrorInfo`` (stable ``reason``, domain ``clipmind.dev``) and, when it names bad fields, a ``BadRequest``
with field violations. Any other exception becomes INTERNAL with a generic message; the real error is
logged with the request id, never sent to the client.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.common import request_context
from services.common.errors import ERROR_DOMAIN, ClipMindError, FieldViolation, Internal, Unavailable, Unimplemented

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"  # where a google.rpc.Status travels (trailing metadata)


def to_rpc_status(exc: ClipMindError) -> status_pb2.Status:
    """The ``google.rpc.Status`` that carries ``exc`` to the client."""
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if exc.field_violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.field_violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    if exc.retry_delay_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(timedelta(seconds=exc.retry_delay_s))
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    return status_pb2.Status(code=code_pb2.Code.Value(exc.code), message=exc.message, details=details)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    bound = request_context.current().request_id  # the one the interceptor bound (and passed on to callees)
    if bound:
        return bound
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)
    return uuid.uuid4().hex


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, NotImplementedError):
        exc = Unimplemented(f"{method} is not implemented yet", reason="NOT_IMPLEMENTED")
    if isinstance(exc, ClipMindError) and exc.code != "INTERNAL":
        status = to_rpc_status(exc)
    else:
        # Internal errors say only that something broke and under which request id: their text (paths,
        # hosts, library messages) is for the log, where the same request id finds it.
        request_id = _request_id(context)
        log.exception("unexpected error in %s (request id %s)", method, request_id, exc_info=exc)
        status = to_rpc_status(
            ClipMindError(f"internal error (request id {request_id})", reason="INTERNAL_ERROR",
                          metadata={"request_id": request_id})
        )
        status.code = code_pb2.INTERNAL
    await context.abort(
        grpc.StatusCode[code_pb2.Code.Name(status.code)],
        status.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
    )


def _passthrough(exc: BaseException) -> bool:
    """Exceptions that are gRPC's own control flow (an abort already under way, a cancelled call)."""
    return isinstance(exc, grpc.aio.AbortError | asyncio.CancelledError)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions of every RPC kind (unary and streaming) to rich statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, method), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, method), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream, method), **kwargs)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method), **kwargs
            )
        return handler


def _wrap_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            if _passthrough(exc):
                raise
            await _abort(context, method, exc)

    return wrapper


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except BaseException as exc:
            if _passthrough(exc):
                raise
            await _abort(context, method, exc)

    return wrapper


# -- the other way: a failed call's status back into the exception tree (internal clients) -------------


def _error_classes() -> dict[grpc.StatusCode, type[ClipMindError]]:
    """Status code → exception class, from the exception tree itself (each class names its code)."""
    classes: dict[grpc.StatusCode, type[ClipMindError]] = {
        grpc.StatusCode[cls.code]: cls for cls in ClipMindError.__subclasses__()
    }
    # A call cancelled by the server (it is shutting down): try again later, like UNAVAILABLE.
    classes[grpc.StatusCode.CANCELLED] = Unavailable
    classes[grpc.StatusCode.UNKNOWN] = classes[grpc.StatusCode.DATA_LOSS] = Internal
    return classes


_ERROR_CLASSES = _error_classes()


def from_rpc_error(err: grpc.aio.AioRpcError, *, method: str = "") -> ClipMindError:
    """The ``ClipMindError`` a failed call stands for: the class of its status code, with reason and metadata
    from the ``ErrorInfo``, ``retry_delay_s`` from ``RetryInfo`` and ``field_violations`` from ``BadRequest``
    found in ``grpc-status-details-bin`` (as ``services.common.grpc_errors`` sends them).

    A status without ErrorInfo comes from the gRPC library, not from a ClipMind server (no connection, deadline
    passed): its reason is the code's name and its message says only which call failed, since the library's
    text names internal addresses; that text stays on the original error (``__cause__`` where the guarded
    stubs raise this).
    """
    code = err.code()
    cls = _ERROR_CLASSES.get(code, Internal)
    status = _rich_status(err)
    reason = code.name
    metadata: dict[str, str] = {}
    retry_delay_s: float | None = None
    violations: list[FieldViolation] = []
    has_info = False
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            has_info = True
            reason = info.reason or reason
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay_s = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    if has_info:
        message = err.details() or code.name
    else:
        message = f"internal call {method or 'to another service'} failed: {code.name}"
    return cls(message=message, reason=reason, metadata=metadata, retry_delay_s=retry_delay_s,
               field_violations=violations)


def _rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in err.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer: keep the plain status
                log.warning("ignoring unparsable %s on %s", STATUS_DETAILS_KEY, err.code().name)
                return None
            return status if status.code == err.code().value[0] else None
    return None
