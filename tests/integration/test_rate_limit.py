"""The Redis rate limiter against a real redis-server: atomic under concurrency, sliding, failing open."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import ResourceExhausted
from services.common.principal import SYSTEM, Principal
from services.common.rate_limit import Limit, RateLimiter
from services.common.request_limits import RequestLimiter, UserLimits
from services.common.revocations import NOTHING_KNOWN, Revocations, Verdict, marks_of, verdict_of
from services.launcher import free_port

pytestmark = pytest.mark.integration


async def test_exactly_the_limit_is_admitted_among_concurrent_hits(redis_url: str) -> None:
    limiter = RateLimiter.from_url(redis_url)  # 200 concurrent calls pipelined on its one connection
    try:
        limit, subject = Limit("test-search", 100, 60), uuid.uuid4().hex
        waits = await asyncio.gather(*(limiter.hit(limit, subject) for _ in range(200)))
        assert sum(w == 0 for w in waits) == 100  # no read-then-write race lets a 101st through
        assert all(0 < w <= 60 for w in waits if w)
        assert await limiter.hit(limit, uuid.uuid4().hex) == 0  # another subject is unaffected
    finally:
        await limiter.close()


async def test_the_window_slides_and_refusals_are_not_counted(redis_url: str) -> None:
    limiter = RateLimiter.from_url(redis_url)
    try:
        limit, subject = Limit("test-slide", 3, 1.0), uuid.uuid4().hex
        assert [await limiter.hit(limit, subject) for _ in range(3)] == [0, 0, 0]
        with pytest.raises(ResourceExhausted) as err:
            await limiter.check(limit, subject, what="tries")
        assert err.value.reason == "RATE_LIMITED" and 0 < (err.value.retry_delay_s or 0) <= 1.0
        await asyncio.sleep(err.value.retry_delay_s or 1.0)
        await limiter.check(limit, subject, what="tries")  # the oldest hit left the window
        await limiter.reset(limit, subject)
        assert [await limiter.hit(limit, subject) for _ in range(3)] == [0, 0, 0]
    finally:
        await limiter.close()


async def test_an_unreachable_redis_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        started = time.monotonic()
        assert await limiter.hit(Limit("test-open", 1, 60), "x") == 0
        assert time.monotonic() - started < 5
        assert "Redis is unreachable" in caplog.text
    finally:
        await limiter.close()


async def test_per_user_limits_admit_exactly_the_limit_and_leave_others_alone(redis_url: str) -> None:
    """200 concurrent searches by one user: exactly 100 pass, the rest are refused with a retry delay; the
    refused ones count against nothing (not even the hourly budget); another user and the system are unaffected."""
    windows = RateLimiter.from_url(redis_url)  # as the services make it
    limiter = RequestLimiter(windows, UserLimits(requests_per_hour=150, searches_per_minute=100))
    ann, bob = Principal(uuid.uuid4(), "user"), Principal(uuid.uuid4(), "user")
    search = "/clipmind.search.v1.SearchService/Search"

    async def attempt(who: Principal, method: str) -> ResourceExhausted | None:
        try:
            await limiter.check(who, method)
        except ResourceExhausted as exc:
            return exc
        return None

    try:
        outcomes = await asyncio.gather(*(attempt(ann, search) for _ in range(200)))
        refused = [o for o in outcomes if o is not None]
        assert len(refused) == 100
        assert {r.reason for r in refused} == {"RATE_LIMITED"}
        assert {r.metadata["limit"] for r in refused} == {"searches"}
        assert all(0 < (r.retry_delay_s or 0) <= 60 for r in refused)
        assert await attempt(bob, search) is None  # another user has their own windows
        assert await attempt(SYSTEM, search) is None  # the services' own calls are never limited
        # Ann's hourly budget (150) took only the 100 admitted searches: 50 other calls pass, the 51st not.
        others = [await attempt(ann, "/clipmind.ingest.v1.IngestService/GetVideo") for _ in range(51)]
        assert [o is None for o in others].count(True) == 50
        assert others[-1] is not None and others[-1].metadata["limit"] == "requests"
    finally:
        await windows.close()


async def test_one_script_call_counts_the_windows_and_reads_the_revocation_marks(redis_url: str) -> None:
    """The interceptor's single Redis call: the call is counted and the credential's marks come back with the
    answer, also when a window is full (so that a revoked credential's refusal can win)."""
    windows = RateLimiter.from_url(redis_url)
    revocations = Revocations.from_url(redis_url)
    limiter = RequestLimiter(windows, UserLimits(requests_per_hour=2))
    ann = Principal(uuid.uuid4(), "user")
    marks = marks_of(ann.user_id, token_id="jti-1")
    method = "/clipmind.ingest.v1.IngestService/GetVideo"
    try:
        refusal, values = await limiter.count(ann, method, read=marks)
        assert refusal is None and values == (None, None) and verdict_of(*values) == NOTHING_KNOWN
        await revocations.revoke_token("jti-1", datetime.now(UTC) + timedelta(minutes=5))
        await revocations.revoke_user(ann.user_id, at=1234.5)
        refusal, values = await limiter.count(ann, method, read=marks)
        assert refusal is None and values is not None
        assert verdict_of(*values) == Verdict(revoked=True, user_revoked_at=1234.5)
        refusal, values = await limiter.count(ann, method, read=marks)  # the third call in the hour: refused
        assert refusal is not None and refusal.reason == "RATE_LIMITED"
        assert values is not None and verdict_of(*values).revoked
        assert (await limiter.count(SYSTEM, method, read=()))[0] is None
    finally:
        await windows.close()
        await revocations.close()
