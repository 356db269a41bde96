"""Rate limits in Redis: a sliding window per key, checked and counted atomically by one Lua script.

Why a script of our own rather than the ``limits`` library: ``limits``' asyncio Redis storage needs a second
Redis client library (coredis) beside the redis-py every process already uses, and the whole mechanism is
the dozen lines below. One script call does the read and the write, so concurrent callers never both take
the last slot (no read-then-write race), and the window slides (no burst of twice the limit across a
window boundary, as fixed windows allow).

Each key is a sorted set of the hits in the last ``window_s`` (member: a unique id, score: the time in
milliseconds from Redis's own clock, so processes on several machines agree). A hit is admitted while fewer
than ``limit`` hits are in the window; a refused hit is not counted, and the answer says when the oldest hit
leaves the window (the ``Retry-After``).

The limiter talks to Redis through ``services.common.redis_pipe`` (one pipelined connection per process): it is
on the path of every request, and redis-py's pooled client costs several times the round trip there.

When Redis is unreachable the limiter fails open (the call is admitted and a warning logged): a limit is
protection, not a reason to take the service down with Redis.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from services.common.errors import ResourceExhausted
from services.common.redis_pipe import RedisPipe

log = logging.getLogger(__name__)

# KEYS[1]: the window's key; ARGV: limit, window in ms, a unique member. Returns {admitted 0|1, retry after ms}.
_SLIDING_WINDOW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(1, tonumber(oldest[2]) + window - now_ms)}
"""

# Several windows at once (a call that counts against its user's hourly requests and per-minute searches):
# admitted only if every window has room, and then counted in each, in one atomic step. The same call can read
# other keys (the credential's revocation marks): the server then needs one Redis round trip per request, not two.
# KEYS: the windows' keys, then the keys to read; ARGV[1]: a unique member, ARGV[2]: the number of windows, then
# limit and window (ms) per window. Returns {admitted 0|1, retry after ms (the longest wait among the full
# windows), index of a full window, then each read key's value ('' for a missing key)}.
_SLIDING_WINDOWS = """
local n = tonumber(ARGV[2])
local read = {}
for i = n + 1, #KEYS do
  read[#read + 1] = redis.call('GET', KEYS[i]) or ''
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local wait, full = 0, 0
for i = 1, n do
  local limit = tonumber(ARGV[2 * i + 1])
  local window = tonumber(ARGV[2 * i + 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms - window)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    local this_wait = math.max(1, tonumber(oldest[2]) + window - now_ms)
    if this_wait > wait then wait, full = this_wait, i end
  end
end
if full > 0 then return {0, wait, full, unpack(read)} end
for i = 1, n do
  redis.call('ZADD', KEYS[i], now_ms, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i + 2]))
end
return {1, 0, 0, unpack(read)}
"""

KEY_PREFIX = "clipmind:rate:"

# A hit's member in a window must be unique across processes and hits: this process's random prefix and a
# counter (uuid4 per hit read os.urandom each time: ~30 us of the request path on this machine).
_PROCESS = os.urandom(8).hex()
_serial = itertools.count()


def _member() -> str:
    return f"{_PROCESS}{next(_serial):x}"


@dataclass(frozen=True)
class Limit:
    """``limit`` hits per ``window_s`` seconds, under the name ``name`` (part of the Redis key)."""

    name: str
    limit: int
    window_s: float


@dataclass(frozen=True)
class Hits:
    """What ``RateLimiter.hit_all`` found: admitted (``full`` None) or the seconds to wait and the full window;
    and the values of the keys it was asked to read (None each for a missing key; ``read`` None when Redis was
    unreachable and nothing could be read)."""

    wait_s: float = 0.0
    full: Limit | None = None
    read: tuple[bytes | None, ...] | None = ()


class RateLimiter:
    def __init__(self, redis: RedisPipe) -> None:
        self._redis = redis
        self._script = redis.script(_SLIDING_WINDOW)
        self._windows = redis.script(_SLIDING_WINDOWS)

    @classmethod
    def from_url(cls, redis_url: str, *, timeout_s: float = 2.0) -> RateLimiter:
        """A limiter on its own pipelined connection: a burst of calls is written to it at once, never refused for
        want of a connection (which would fail the limit open exactly under load)."""
        return cls(RedisPipe(redis_url, connect_timeout_s=timeout_s, timeout_s=timeout_s))

    async def close(self) -> None:
        await self._redis.aclose()

    async def hit(self, limit: Limit, subject: str) -> float:
        """Count one hit of ``subject`` against ``limit``: 0 when admitted, else the seconds until a hit would
        be (nothing is counted then)."""
        try:
            admitted, retry_ms = await self._script(
                keys=[f"{KEY_PREFIX}{limit.name}:{subject}"],
                args=[limit.limit, int(limit.window_s * 1000), _member()])
        except (RedisError, OSError) as exc:
            log.warning("rate limit %s not checked, Redis is unreachable (%s): admitted", limit.name, exc)
            return 0.0
        return 0.0 if int(admitted) else int(retry_ms) / 1000

    async def hit_all(self, limits: list[tuple[Limit, str]], *, read: Sequence[str] = ()) -> Hits:
        """Count one hit of each (limit, subject) if all have room (``full`` None); else nothing is counted and
        the answer has the seconds until all would admit it and the limit that is full. ``read``: keys whose
        values come back with the answer, read in the same script (one round trip). Fails open like ``hit``
        (admitted, ``read`` None)."""
        if not limits and not read:
            return Hits()
        args: list[str | int] = [_member(), len(limits)]
        for limit, _ in limits:
            args += [limit.limit, int(limit.window_s * 1000)]
        try:
            admitted, retry_ms, full, *values = await self._windows(
                keys=[*(f"{KEY_PREFIX}{limit.name}:{subject}" for limit, subject in limits), *read], args=args)
        except (RedisError, OSError) as exc:
            log.warning("rate limits %s not checked, Redis is unreachable (%s): admitted",
                        ",".join(limit.name for limit, _ in limits) or "(none)", exc)
            return Hits(read=None)
        found = tuple(v if v else None for v in values)
        if int(admitted):
            return Hits(read=found)
        return Hits(int(retry_ms) / 1000, limits[int(full) - 1][0], found)

    async def check(self, limit: Limit, subject: str, *, what: str) -> None:
        """Count one hit; RESOURCE_EXHAUSTED (``RATE_LIMITED``, with the retry delay) when over ``limit``."""
        wait_s = await self.hit(limit, subject)
        if wait_s:
            raise ResourceExhausted(
                f"too many {what}: at most {limit.limit} per {limit.window_s:g} s; retry in {wait_s:.0f} s",
                reason="RATE_LIMITED", metadata={"limit": limit.name}, retry_delay_s=wait_s)

    async def reset(self, limit: Limit, subject: str) -> None:
        """Forget ``subject``'s hits (e.g. failed sign-ins after one that succeeded)."""
        try:
            await self._redis.execute("DEL", f"{KEY_PREFIX}{limit.name}:{subject}")
        except (RedisError, OSError) as exc:
            log.warning("rate limit %s not reset, Redis is unreachable (%s)", limit.name, exc)
