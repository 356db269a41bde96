"""The Redis rate limiter against a real redis-server: atomic under concurrency, sliding, failing open."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from services.common.errors import ResourceExhausted
from services.common.rate_limit import Limit, RateLimiter
from services.launcher import free_port

pytestmark = pytest.mark.integration


async def test_exactly_the_limit_is_admitted_among_concurrent_hits(redis_url: str) -> None:
    limiter = RateLimiter.from_url(redis_url)  # 200 concurrent calls share its 64 connections
    try:
        limit, subject = Limit("test-search", 100, 60), uuid.uuid4().hex
        waits = await asyncio.gather(*(limiter.hit(limit, subject) for _ in range(200)))
        assert sum(w == 0 for w in waits) == 100  # no read-then-write race lets a 101st through
        assert all(0 < w <= 60 for w in waits if w)
        assert await limiter.hit(limit, uuid.uuid4().hex) == 0  # another subject is unaffected
    finally:
        await limiter.close()


async def test_the_window_slides_and_refusals_are_not_counted(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        limiter = RateLimiter(client)
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
        await client.aclose()


async def test_an_unreachable_redis_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        started = time.monotonic()
        assert await RateLimiter(client).hit(Limit("test-open", 1, 60), "x") == 0
        assert time.monotonic() - started < 5
        assert "Redis is unreachable" in caplog.text
    finally:
        await client.aclose()
