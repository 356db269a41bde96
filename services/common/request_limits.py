"""Per-user request limits, checked by the server interceptor after authentication (one Redis script call, which
also reads the credential's revocation marks).

Every user's calls count against an hourly request budget; searches and uploads have their own, tighter
windows (``UserLimits``; settings ``CLIPMIND_RATE_LIMIT_*``, 0 turns one off). A call over any of them is
refused before it runs with RESOURCE_EXHAUSTED ``RATE_LIMITED``, a RetryInfo saying when it would be admitted,
and a ``retry-after`` header (seconds), which Envoy passes on with its HTTP 429. A refused call is counted in
no window. The system identity (the services' own calls) is never limited. Limits are windows per user id, so
all of a user's API keys and sessions share them, on every replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import ResourceExhausted
from services.common.principal import Principal
from services.common.rate_limit import Hits, Limit

SEARCH_METHODS = frozenset({
    "/clipmind.search.v1.SearchService/Search",
    "/clipmind.search.v1.SearchService/FindSimilarClips",
})
UPLOAD_METHODS = frozenset({
    "/clipmind.ingest.v1.IngestService/CreateUpload",
    "/clipmind.ingest.v1.IngestService/UploadVideo",
    "/clipmind.ingest.v1.IngestService/ImportVideo",
})


class Windows(Protocol):
    async def hit_all(self, limits: list[tuple[Limit, str]], *, read: Sequence[str] = ()) -> Hits: ...


@dataclass(frozen=True)
class UserLimits:
    """How much one user may do; 0 means no limit of that kind."""

    requests_per_hour: int = 1000
    searches_per_minute: int = 100
    uploads_per_hour: int = 10

    def windows(self, method: str) -> list[tuple[Limit, str]]:
        """The limits a call of ``method`` counts against, with what each is called in a refusal."""
        chosen = []
        if self.requests_per_hour:
            chosen.append(Limit("requests", self.requests_per_hour, 3600))
        if self.searches_per_minute and method in SEARCH_METHODS:
            chosen.append(Limit("searches", self.searches_per_minute, 60))
        if self.uploads_per_hour and method in UPLOAD_METHODS:
            chosen.append(Limit("uploads", self.uploads_per_hour, 3600))
        return [(limit, "") for limit in chosen]


class RequestLimiter:
    def __init__(self, windows: Windows, limits: UserLimits) -> None:
        self._windows = windows
        self._limits = limits

    async def count(self, caller: Principal, method: str, *,
                    read: Sequence[str] = ()) -> tuple[ResourceExhausted | None, tuple[bytes | None, ...] | None]:
        """Count the call against its user's windows, reading ``read`` (Redis keys: the credential's revocation
        marks) in the same round trip: (the refusal when a window is full, else None; the values read, None when
        Redis was unreachable). The caller decides which refusal wins."""
        windows = [] if caller.role == "system" else [
            (limit, str(caller.user_id)) for limit, _ in self._limits.windows(method)]
        hits = await self._windows.hit_all(windows, read=read)
        if hits.full is None:
            return None, hits.read
        full, wait = hits.full, max(1, round(hits.wait_s))
        per = "hour" if full.window_s == 3600 else "minute" if full.window_s == 60 else f"{full.window_s:g} s"
        return ResourceExhausted(
            f"too many {full.name}: at most {full.limit} per {per} for one user; retry in {wait} s",
            reason="RATE_LIMITED", metadata={"limit": full.name, "max": str(full.limit)},
            retry_delay_s=hits.wait_s), hits.read

    async def check(self, caller: Principal, method: str) -> None:
        """Count the call against its user's windows; RESOURCE_EXHAUSTED ``RATE_LIMITED`` when one is full."""
        refusal, _ = await self.count(caller, method)
        if refusal is not None:
            raise refusal
