"""The API layer: a service's real servicer, domain code and interceptors (authentication, per-user limits,
errors) in an in-process gRPC server on port 0, with in-memory fakes of its storage Protocols (the ports beside
the domain code). Fast, no database: what these tests prove is the contract at the gRPC edge — status codes,
reasons, who may call what, page tokens — while tests/integration proves the adapters on real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager

import grpc
import grpc.aio

from services.common.auth import Authenticator
from services.common.auth_interceptor import AuthInterceptor
from services.common.grpc_errors import ErrorInterceptor
from services.common.request_limits import RequestLimiter


@asynccontextmanager
async def serving(register: Callable[[grpc.aio.Server], object], authenticator: Authenticator, *,
                  optional_methods: Collection[str] = (), limits: RequestLimiter | None = None,
                  ) -> AsyncIterator[str]:
    """A server with the production interceptors, in this process; yields its ``host:port``."""
    server = grpc.aio.server(interceptors=[
        AuthInterceptor(authenticator, optional_methods=optional_methods, limits=limits), ErrorInterceptor()])
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def bearer(credential: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {credential}"),)
