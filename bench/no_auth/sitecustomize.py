"""Benchmark only (``bench/search_latency.py --without-auth``): every ClipMind process started with this directory
on its PYTHONPATH skips authentication and the per-user limits. Python imports ``sitecustomize`` at start-up;
this one replaces ``AuthInterceptor.authenticate`` so that every call runs as an administrator (internal calls
as the system) without reading a credential, a token cache or Redis — the same code otherwise, so the
benchmark's difference between this mesh and a normal one is what authentication costs.

Never on a deployment's path: nothing in ``services`` refers to this directory."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

try:
    from services.common import auth_interceptor
    from services.common.auth import Caller
    from services.common.principal import SYSTEM, Principal
except ImportError:  # a process that is not a ClipMind service (e.g. a tool the launcher runs)
    pass
else:
    BENCH_ADMIN = Principal(uuid.UUID("00000000-0000-0000-0000-00000000be0c"), "admin")

    async def _anyone(self: object, metadata: Sequence[tuple[str, str | bytes]], method: str) -> Caller:
        return Caller(SYSTEM if auth_interceptor.is_internal_method(method) else BENCH_ADMIN)

    auth_interceptor.AuthInterceptor.authenticate = _anyone  # type: ignore[method-assign]
