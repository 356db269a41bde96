"""The one way a service calls another: ``InternalChannels``, built once per process in its composition root.

    channels = InternalChannels(settings)                    # server.py / worker on_startup
    search = channels.stub(SearchInternalServiceStub, settings.search_url)              # idempotent: retried
    submit = channels.stub(PipelineInternalServiceStub, settings.pipeline_url, idempotent=False)
    await search.ReplaceVideoIndex(request)                  # raises services.common.errors on failure
    ...
    await channels.close()                                   # on_stop

Why each piece exists:

* **One channel per (target, idempotent), cached.** A gRPC channel is a connection pool with its own
  resolver and load balancer; making one per call would reconnect every time. Idempotent and
  non-idempotent stubs need different retry policies, and gRPC takes the policy from the channel's service
  config, hence two channels per target at most.
* **Client-side round robin** (``loadBalancingConfig: round_robin``). The target is a DNS name
  (``dns:///search:50053``); gRPC connects to every address it resolves to and spreads calls over them, so
  replicas behind one name (a Kubernetes headless service, several A/AAAA records) all get work, with no
  proxy in between. ``grpc.dns_min_time_between_resolutions_ms`` keeps re-resolution after a lost
  connection quick, so replacements are found. (gRPC re-resolves when a connection drops, not on a timer:
  servers should bound connection age so that clients pick up added replicas.)
* **Retries by gRPC itself** (a ``retryPolicy`` in the service config): idempotent calls that fail
  UNAVAILABLE are tried up to ``internal_max_attempts`` times with exponential backoff and jitter, honour
  server push-back, are throttled channel-wide (``retryThrottling``) so a sick backend does not get a retry
  storm, and all attempts share the call's one deadline. Non-idempotent calls get no policy: one attempt
  (gRPC still transparently retries an attempt that never reached a server, which is safe). The channel
  ignores service configs published in DNS TXT records: the policy is ours.
* **Short reconnect backoff** (250 ms growing to 5 s instead of gRPC's 1 s → 120 s): a backend that comes
  back is reconnected to within seconds, so the breaker's probe finds a live connection.
* **Keepalive pings** find connections that died silently (a replica that vanished without a FIN) in
  seconds instead of at the next call's deadline. (Servers must accept pings every 30 s without calls:
  ``grpc.keepalive_permit_without_calls`` 1 and ``grpc.http2.min_ping_interval_without_data_ms`` ≤ 30000.)
* **Interceptors on every channel** stamp each call with what the server needs, whatever stub is used:
  a default deadline (``internal_deadline_s``) when the caller gave none, so no call waits forever;
  ``authorization: Bearer <system token>`` (a ``system`` JWT this process signs with ``CLIPMIND_JWT_KEYS`` and
  renews before it expires: the service identity ``services.common.auth_interceptor`` checks) and
  ``x-clipmind-caller`` (the calling service, for logs); and the current ``x-request-id``/``traceparent``/``tracestate``
  from ``services.common.request_context``, so one request id follows a request across hops. Headers the
  caller set itself win.
* **Stubs from ``stub()`` are guarded**: each method is replaced by a thin wrapper that awaits the real
  call and (a) converts ``grpc.aio.AioRpcError`` into the ``ClipMindError`` of the same code with the
  server's ErrorInfo reason/metadata, RetryInfo and BadRequest (``from_rpc_error``), so domain code catches
  ``NotFound`` / ``FailedPrecondition`` / ``Unavailable`` the same whether the data is local or behind an
  RPC; (b) applies a **circuit breaker per target**: after ``internal_breaker_failures`` consecutive
  UNAVAILABLE / DEADLINE_EXCEEDED outcomes (after gRPC's own retries) calls fail at once with
  ``Unavailable(reason="CIRCUIT_OPEN")`` and a retry delay, until ``internal_breaker_reset_s`` has passed
  and one probe call is let through. Any other answer proves the server is there and counts as success.
  This is done in a wrapper rather than an aio interceptor because an interceptor cannot replace the
  exception a call raises without re-implementing the call object; the wrapper is a few lines and is the
  same for unary and streaming calls. The wrapper keeps the stub's method names and call signature
  (``await stub.M(req, timeout=...)``; ``async for x in stub.S(req)``) so ``stub()`` is typed as the stub
  class; what it does not offer is the call object's extras (``initial_metadata()``, ``read()``, ...).

Long-lived streams (e.g. WatchJob) must pass their own ``timeout``: the default deadline applies to them too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from services.common import request_context
from services.common.auth import SystemCredentials, settings_signer
from services.common.circuit import CircuitBreaker
from services.common.config import CommonSettings
from services.common.errors import Unavailable
from services.common.grpc_errors import from_rpc_error
from services.common.grpc_tracing import client_interceptors as tracing_interceptors

log = logging.getLogger(__name__)

S = TypeVar("S")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
AUTHORIZATION_KEY = "authorization"

#: Outcomes that say the backend is not there (or not answering); everything else proves it is.
BREAKER_FAILURE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# -- channel configuration -----------------------------------------------------------------------------------


def service_config(*, max_attempts: int | None) -> str:
    """The channel's service config: round robin, and a retry policy when ``max_attempts`` (≥ 2) is given."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if max_attempts is not None and max_attempts >= 2:
        config["methodConfig"] = [{
            "name": [{}],  # every method of every service on this channel
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    return json.dumps(config)


def channel_options(settings: CommonSettings, *, idempotent: bool) -> list[tuple[str, Any]]:
    caller = settings.service_name or "unknown"
    return [
        ("grpc.service_config", service_config(max_attempts=settings.internal_max_attempts if idempotent else None)),
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.dns_min_time_between_resolutions_ms", 5_000),
        # Reconnect to a lost backend within seconds (gRPC's default backoff grows to 120 s), so the breaker's
        # probe after internal_breaker_reset_s finds a connection attempt rather than a channel still backing off.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.primary_user_agent", f"clipmind-{caller}"),
    ]


# -- interceptors: deadline, identity, request context ------------------------------------------------------


class _StampCalls:
    """Adds the default deadline and the identity/context headers to a call's details."""

    def __init__(self, headers: Sequence[tuple[str, str]], default_timeout_s: float,
                 authorization: Callable[[], str] | None = None) -> None:
        self._headers = tuple(headers)
        self._default_timeout_s = default_timeout_s
        self._authorization = authorization

    def _stamp(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        given = list(details.metadata or ())
        present = {key for key, _ in given}
        own = [*self._headers, *request_context.outgoing_metadata()]
        if self._authorization is not None:
            own.append((AUTHORIZATION_KEY, self._authorization()))
        extra = [(k, v) for k, v in own if k not in present]
        timeout = details.timeout if details.timeout is not None else self._default_timeout_s
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=grpc.aio.Metadata(*given, *extra),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class _StampUnaryUnary(_StampCalls, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._stamp(client_call_details), request)


class _StampUnaryStream(_StampCalls, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._stamp(client_call_details), request)


class _StampStreamUnary(_StampCalls, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._stamp(client_call_details), request_iterator)


class _StampStreamStream(_StampCalls, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._stamp(client_call_details), request_iterator)


# -- guarded stubs: circuit breaker and error conversion ----------------------------------------------------


class _Guard:
    """The breaker of one target, and how a call's outcome is told to it."""

    def __init__(self, target: str, breaker: CircuitBreaker) -> None:
        self.target = target
        self.breaker = breaker

    def admit(self) -> bool:
        """Let a call go, or raise CIRCUIT_OPEN. Returns whether the call is the breaker's probe."""
        probing = self.breaker.state != "closed"
        if not self.breaker.allow():
            delay = self.breaker.retry_after_s()
            raise Unavailable(
                message=f"{self.target} is not answering (circuit open after repeated failures); "
                f"retry in {delay:.1f}s",
                reason="CIRCUIT_OPEN",
                retry_delay_s=delay,
            )
        return probing

    def answered(self, code: grpc.StatusCode) -> None:
        if code in BREAKER_FAILURE_CODES:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()

    def unsettled(self, probing: bool) -> None:
        """The call ended without an answer (cancelled by the caller, refused client side)."""
        if probing:
            self.breaker.release_probe()


class _GuardedUnary:
    """Replaces a unary-response multicallable (unary-unary, stream-unary)."""

    def __init__(self, inner: Any, guard: _Guard, method: str) -> None:
        self._inner = inner
        self._guard = guard
        self._method = method

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        probing = self._guard.admit()
        try:
            response = await self._inner(*args, **kwargs)
        except grpc.aio.AioRpcError as err:
            self._guard.answered(err.code())
            raise from_rpc_error(err, method=self._method) from err
        except BaseException:
            self._guard.unsettled(probing)
            raise
        self._guard.answered(grpc.StatusCode.OK)
        return response


class _GuardedStream:
    """Replaces a streaming-response multicallable (unary-stream, stream-stream): returns an async iterator.

    The first message (or the end of an empty stream) proves the server is there; a later error is the
    stream's business (a deadline the caller chose, a server going away) and is not held against the target.
    """

    def __init__(self, inner: Any, guard: _Guard, method: str) -> None:
        self._inner = inner
        self._guard = guard
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return self._iterate(args, kwargs)

    async def _iterate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        probing = self._guard.admit()
        settled = False
        call: Any = None
        try:
            call = self._inner(*args, **kwargs)
            async for item in call:
                if not settled:
                    settled = True
                    self._guard.answered(grpc.StatusCode.OK)
                yield item
            if not settled:
                settled = True
                self._guard.answered(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as err:
            if not settled:
                settled = True
                self._guard.answered(err.code())
            raise from_rpc_error(err, method=self._method) from err
        finally:
            if not settled:
                self._guard.unsettled(probing)
            if call is not None and not call.done():
                call.cancel()


_UNARY_RESPONSE = (grpc.aio.UnaryUnaryMultiCallable, grpc.aio.StreamUnaryMultiCallable)
_STREAM_RESPONSE = (grpc.aio.UnaryStreamMultiCallable, grpc.aio.StreamStreamMultiCallable)


# -- the factory -------------------------------------------------------------------------------------------


class InternalChannels:
    """Channels and guarded stubs for this process's internal calls; one per process, closed on shutdown."""

    def __init__(self, settings: CommonSettings, *, caller: str | None = None) -> None:
        self._settings = settings
        self._caller = caller if caller is not None else settings.service_name
        authorization: Callable[[], str] | None = None
        if settings.jwt_keys.get_secret_value():
            authorization = SystemCredentials(settings_signer(settings)).authorization
        else:
            log.warning("CLIPMIND_JWT_KEYS is empty: internal calls from %s carry no identity and will be refused",
                        self._caller or "this process")
        headers: list[tuple[str, str]] = []
        if self._caller:
            headers.append((request_context.CALLER_KEY, self._caller))
        timeout = settings.internal_deadline_s
        # Tracing first (off: none): its CLIENT span's traceparent is on the call before the stamping, which
        # then leaves it (services.common.grpc_tracing).
        self._interceptors: list[grpc.aio.ClientInterceptor] = [
            *tracing_interceptors(),
            _StampUnaryUnary(headers, timeout, authorization),
            _StampUnaryStream(headers, timeout, authorization),
            _StampStreamUnary(headers, timeout, authorization),
            _StampStreamStream(headers, timeout, authorization),
        ]
        self._channels: dict[tuple[str, bool], grpc.aio.Channel] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._closed = False

    def channel(self, target: str, *, idempotent: bool = True) -> grpc.aio.Channel:
        """The cached channel to ``target`` (a gRPC target such as ``dns:///search:50053``). Calls on it carry
        the deadline and identity headers; use ``stub()`` to also get the breaker and error conversion."""
        if self._closed:
            raise RuntimeError("InternalChannels is closed")
        key = (target, idempotent)
        channel = self._channels.get(key)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                target,
                options=channel_options(self._settings, idempotent=idempotent),
                interceptors=self._interceptors,
            )
            self._channels[key] = channel
        return channel

    def breaker(self, target: str) -> CircuitBreaker:
        """The circuit breaker of ``target`` (shared by its idempotent and non-idempotent stubs)."""
        breaker = self._breakers.get(target)
        if breaker is None:
            breaker = CircuitBreaker(self._settings.internal_breaker_failures, self._settings.internal_breaker_reset_s)
            self._breakers[target] = breaker
        return breaker

    def stub(self, stub_class: Callable[[grpc.aio.Channel], S], target: str, *, idempotent: bool = True) -> S:
        """A stub of ``stub_class`` on ``target`` whose methods raise ``ClipMindError`` and go through the
        target's breaker. ``idempotent=False`` for methods that must not run twice (no retries)."""
        stub = stub_class(self.channel(target, idempotent=idempotent))
        guard = _Guard(target, self.breaker(target))
        for name, value in list(vars(stub).items()):
            if isinstance(value, _UNARY_RESPONSE):
                setattr(stub, name, _GuardedUnary(value, guard, name))
            elif isinstance(value, _STREAM_RESPONSE):
                setattr(stub, name, _GuardedStream(value, guard, name))
        return stub

    async def close(self) -> None:
        """Close every channel (calls in flight are cancelled)."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> InternalChannels:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
