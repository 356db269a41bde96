"""Who and what the current call is about: request id, W3C trace context, calling service, the principal.

One ``ContextVar`` holds a frozen ``RequestContext``. The server side (``services.common.auth_interceptor``)
binds it for the duration of every RPC handler from the incoming metadata; the client side
(``services.common.grpc_client``) reads it to put the same request id and trace headers on every outgoing
internal call. So one request id follows a request across every hop of the mesh and into every log line,
without any function having to pass it along. Code that works outside an RPC (an arq job, a sweep) binds
its own with ``bind(request_id=...)`` per unit of work.

asyncio tasks copy the context when they are created, so a task started inside a handler keeps the
handler's request id; binding never leaks out of the ``with`` block (or past ``reset(token)``).
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from services.common.errors import Unauthenticated
from services.common.principal import Principal
from services.common.tokens import Claims

REQUEST_ID_KEY = "x-request-id"
TRACEPARENT_KEY = "traceparent"
TRACESTATE_KEY = "tracestate"
CALLER_KEY = "x-clipmind-caller"

_MAX_REQUEST_ID = 128
_MAX_TRACESTATE = 512
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{_MAX_REQUEST_ID}}}")
# W3C trace context: version-traceid-parentid-flags, lowercase hex; later versions may append fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_CALLER = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


@dataclass(frozen=True)
class RequestContext:
    """The current call. Empty strings mean "not known"."""

    request_id: str = ""
    traceparent: str = ""
    tracestate: str = ""
    caller: str = ""  # the service that called us (authenticated internal calls only)
    principal: Principal | None = None  # who is calling (None: an open method, or one called anonymously)
    claims: Claims | None = None  # the verified access token of the call, when it came with one
    auth_ms: float = 0.0  # what authenticating the call (and counting it against the limits) took


EMPTY = RequestContext()
_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("clipmind_request_context", default=EMPTY)


def current() -> RequestContext:
    """The context bound now (an empty one outside any call)."""
    return _current.get()


def principal() -> Principal:
    """The authenticated caller of the current call; UNAUTHENTICATED when there is none."""
    who = _current.get().principal
    if who is None:
        raise Unauthenticated("sign in first: send `authorization: Bearer <access token or API key>`",
                              reason="CREDENTIALS_REQUIRED")
    return who


def new_request_id() -> str:
    return uuid.uuid4().hex


def set_context(ctx: RequestContext) -> contextvars.Token[RequestContext]:
    """Bind ``ctx``; give the token to ``reset`` to undo it."""
    return _current.set(ctx)


def reset(token: contextvars.Token[RequestContext]) -> None:
    _current.reset(token)


@contextmanager
def bind(
    *,
    request_id: str | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    caller: str | None = None,
    principal: Principal | None = None,
) -> Iterator[RequestContext]:
    """Bind the given fields over the current context for the ``with`` block; yields the new context."""
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("request_id", request_id),
            ("traceparent", traceparent),
            ("tracestate", tracestate),
            ("caller", caller),
            ("principal", principal),
        )
        if v is not None
    }
    ctx = replace(current(), **changes)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def outgoing_metadata() -> list[tuple[str, str]]:
    """Headers for an outgoing call: the bound request id (a fresh one if none is bound) and trace context."""
    ctx = current()
    headers = [(REQUEST_ID_KEY, ctx.request_id or new_request_id())]
    if ctx.traceparent:
        headers.append((TRACEPARENT_KEY, ctx.traceparent))
        if ctx.tracestate:
            headers.append((TRACESTATE_KEY, ctx.tracestate))
    return headers


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None, *, trust_caller: bool) -> RequestContext:
    """The context an incoming call brings. Values a client controls are checked, since they end up in logs
    and in further calls: a malformed request id is replaced by a new one, a malformed traceparent is dropped
    (with its tracestate, as W3C asks), and the caller is read only when ``trust_caller`` (the call proved
    a service identity)."""
    values: dict[str, str] = {}
    for key, value in metadata or ():
        if key in values or isinstance(value, bytes):
            continue
        values[key] = value
    request_id = values.get(REQUEST_ID_KEY, "")
    if not _REQUEST_ID.fullmatch(request_id):
        request_id = new_request_id()
    traceparent = values.get(TRACEPARENT_KEY, "").strip()
    tracestate = ""
    if valid_traceparent(traceparent):
        tracestate = values.get(TRACESTATE_KEY, "").strip()
        if len(tracestate) > _MAX_TRACESTATE or not tracestate.isprintable():
            tracestate = ""
    else:
        traceparent = ""
    caller = values.get(CALLER_KEY, "") if trust_caller else ""
    if not _CALLER.fullmatch(caller):
        caller = ""
    return RequestContext(request_id=request_id, traceparent=traceparent, tracestate=tracestate, caller=caller)


def valid_traceparent(value: str) -> bool:
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return False
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return False
    return trace_id != "0" * 32 and parent_id != "0" * 16
