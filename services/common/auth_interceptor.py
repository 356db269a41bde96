"""Server side of authentication: one interceptor, first on every server, for unary and streaming methods.

    grpc.aio.server(interceptors=[AuthInterceptor(authenticator), ErrorInterceptor()])

Who may call what:

* **Health** (``grpc.health.v1``) and **reflection** (registered only when ``CLIPMIND_GRPC_REFLECTION`` is on)
  are open, so probes and ``grpcurl`` need no credential.
* **Internal methods** (a package with an ``internal`` segment, ``/clipmind.search.internal.v1.…``; Envoy never
  routes them) want the ``system`` identity: a token the services sign themselves
  (``services.common.auth.SystemCredentials``). Without a credential the call ends UNAUTHENTICATED
  ``SERVICE_IDENTITY_REQUIRED``; with a user's credential or a bad one, ``SERVICE_IDENTITY_INVALID``.
* **Methods a server names as optional** (identity's Login, RefreshToken, Logout, CreateUser) take a call
  without a credential; one that is sent must be valid.
* **Every other method** wants ``authorization: Bearer <access token or API key>`` (Envoy forwards the HTTP
  header as this metadata); missing or bad → UNAUTHENTICATED, which Envoy answers as HTTP 401.
* **Per-user limits** (``services.common.request_limits``): an authenticated user's public call is then
  counted against their windows; over one → RESOURCE_EXHAUSTED with RetryInfo and ``retry-after`` (429).

A refused request is not even deserialized. For every call the interceptor binds the request context
(``services.common.request_context``): request id, W3C trace context, the calling service (trusted only from a
``system`` caller) and the authenticated ``Principal`` with the token's claims, for as long as the handler
runs. Servicers read the principal from there and hand it to domain code as a plain value. It is bound inside
the wrapped handler behaviour, which runs in the RPC's own task, so it cannot leak into other calls. The request
id and trace are bound while authenticating too (an API key's lookup at identity carries them). When the
handler ends, one INFO line on the ``clipmind.access`` logger gives the method, status code and duration (health
checks and reflection excepted), with the request context in its fields (``services.common.logs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any

import grpc
import grpc.aio

from services.common import request_context, tracing
from services.common.auth import Authenticator, Caller, parse_authorization
from services.common.errors import ClipMindError, Unauthenticated
from services.common.grpc_errors import STATUS_DETAILS_KEY, to_rpc_status
from services.common.grpc_handlers import handler_kind, stream_results
from services.common.grpc_metrics import status_name
from services.common.request_context import RequestContext
from services.common.request_limits import RequestLimiter
from services.common.revocations import NOTHING_KNOWN, verdict_of

log = logging.getLogger(__name__)
access_log = logging.getLogger("clipmind.access")  # one INFO line per call (not health, not reflection)

AUTHORIZATION_KEY = "authorization"
RETRY_AFTER_KEY = "retry-after"
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")


def is_internal_method(method: str) -> bool:
    """True for ``/pkg.internal.v1.Service/Method``: a package segment (not the service name) is ``internal``."""
    service = method.lstrip("/").split("/", 1)[0]
    return "internal" in service.split(".")[:-1]


def _service_of(method: str) -> str:
    return method.lstrip("/").split("/", 1)[0]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call that needs it and binds the request context on every call."""

    def __init__(self, authenticator: Authenticator, *, optional_methods: Collection[str] = (),
                 limits: RequestLimiter | None = None) -> None:
        self._authenticator = authenticator
        self._optional = frozenset(optional_methods)
        self._limits = limits

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
        caller: Caller | None = None
        started = time.perf_counter()
        ctx = request_context.from_metadata(metadata, trust_caller=True)
        if _service_of(method) not in OPEN_SERVICES:
            # The request id and trace are bound while authenticating, so a call it makes (an API key asked of
            # identity) and its log lines carry them too; the claimed caller is not, until it is proven.
            # Tracing: the caller's span is the parent meanwhile (this server's span starts with the handler).
            token = request_context.set_context(dataclasses.replace(ctx, caller=""))
            try:
                with tracing.within_remote(ctx.traceparent, ctx.tracestate):
                    caller = await self.authenticate(metadata, method)
            except ClipMindError as refusal:
                return _refusing(handler, refusal, method)
            finally:
                request_context.reset(token)
        auth_ms = (time.perf_counter() - started) * 1000
        if caller is None or caller.principal.role != "system":
            ctx = dataclasses.replace(ctx, caller="")
        if caller is not None:
            ctx = dataclasses.replace(ctx, principal=caller.principal, claims=caller.claims, auth_ms=auth_ms)
        return _binding(handler, ctx, method, started)

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]], method: str) -> Caller | None:
        """The caller of a call with this metadata (None for an optional method called without credential);
        raises the refusal otherwise."""
        values = [value for key, value in metadata if key == AUTHORIZATION_KEY]
        internal = is_internal_method(method)
        if not values:
            if internal:
                raise Unauthenticated("this method is for ClipMind services only (the system identity)",
                                      reason="SERVICE_IDENTITY_REQUIRED", metadata={"method": method})
            if method in self._optional:
                return None
            raise Unauthenticated("sign in first: send `authorization: Bearer <access token or API key>`",
                                  reason="CREDENTIALS_REQUIRED")
        try:
            pending = await self._authenticator.begin(parse_authorization(values[0]))
        except Unauthenticated as exc:
            if internal:
                raise Unauthenticated("the service identity is not valid (CLIPMIND_JWT_KEYS differs between "
                                      "services?)", reason="SERVICE_IDENTITY_INVALID",
                                      metadata={"method": method}) from exc
            raise
        if internal:
            if pending.claimed.principal.role != "system":  # a user's credential, whatever Redis says of it
                raise Unauthenticated("this method is for ClipMind services only (the system identity)",
                                      reason="SERVICE_IDENTITY_INVALID", metadata={"method": method})
            return await self._authenticator.confirm(pending)
        if self._limits is None:
            return await self._authenticator.confirm(pending)
        # One Redis call counts the call against the user's windows and reads the credential's revocation marks
        # (a script: one round trip); a refused credential wins over a full window. Redis unreachable: both fail
        # open (the signature and expiry still hold), as each does alone.
        limited, marks = await self._limits.count(pending.claimed.principal, method, read=pending.marks)
        verdict = verdict_of(*marks) if marks else NOTHING_KNOWN
        caller = await pending.decide(verdict)
        if limited is not None:
            raise limited
        return caller


def _refusing(handler: grpc.RpcMethodHandler, refusal: ClipMindError, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that aborts with ``refusal`` (the request is left as raw bytes)."""
    make, _behavior, _streams = handler_kind(handler)
    status = to_rpc_status(refusal)
    trailer: tuple[tuple[str, str | bytes], ...] = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    if refusal.retry_delay_s:  # HTTP clients (through Envoy's 429) read this rather than the RetryInfo
        trailer += ((RETRY_AFTER_KEY, str(max(1, math.ceil(refusal.retry_delay_s)))),)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        log.info("refused %s from %s: %s", method, context.peer(), refusal.reason)
        await context.abort(grpc.StatusCode[refusal.code], refusal.message, trailing_metadata=trailer)

    return make(refuse, request_deserializer=None, response_serializer=handler.response_serializer)


def _binding(handler: grpc.RpcMethodHandler, ctx: RequestContext, method: str,
             started: float) -> grpc.RpcMethodHandler:
    """The same handler, with ``ctx`` bound while its behaviour runs (and one access-log line when it ends)."""
    make, behavior, streams = handler_kind(handler)
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    logged = _service_of(method) not in OPEN_SERVICES  # health checks and reflection would drown the log
    if streams:
        return make(_bind_stream(behavior, ctx, method, started, logged), **kwargs)
    return make(_bind_unary(behavior, ctx, method, started, logged), **kwargs)


def _access_log(context: grpc.aio.ServicerContext, method: str, started: float,
                failure: BaseException | None) -> None:
    """The one line per call: method, status code, duration (with the request context still bound)."""
    code = status_name(context, failure)
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    access_log.info("%s %s %.1f ms", method, code, duration_ms,
                    extra={"method": method, "code": code, "duration_ms": duration_ms})


def _bind_unary(behavior: Callable[..., Any], ctx: RequestContext, method: str, started: float,
                logged: bool) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token, failure = request_context.set_context(ctx), None
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if logged:
                _access_log(context, method, started, failure)
            request_context.reset(token)

    return wrapper


def _bind_stream(behavior: Callable[..., Any], ctx: RequestContext, method: str, started: float,
                 logged: bool) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        token, failure = request_context.set_context(ctx), None
        try:
            async for item in stream_results(behavior(request, context)):
                yield item
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if logged:
                _access_log(context, method, started, failure)
            # An abandoned generator may be closed later from another context; the RPC's task ends anyway.
            with contextlib.suppress(ValueError):
                request_context.reset(token)

    return wrapper
