"""The query cache (``ports.QueryCache``): a search's fused ranking, kept so that the same search again (the next
page, a repeated query, several users of one admin account) skips encoding, retrieval and fusion.

Two levels, as the seed names them:

* **L1**, in this process: an LRU of ``l1_size`` entries (no I/O at all on a hit).
* **L2**, in Redis: one hash per scope (``clipmind:search:cache:<owner>``, or ``…:all`` for the administrators'
  unfiltered scope), field = the query's key, value = the ranking with the time it was stored. An entry older
  than ``ttl_s`` (1 h) is not used; the hash expires ``ttl_s`` after its last write.

**Invalidation.** Whenever the set of a user's searchable clips changes (a video becomes READY or stops being,
is reindexed or deleted: ``SearchInternalService`` calls ``invalidate``) that user's hash and the ``all`` hash
are deleted, this process's L1 entries of both scopes are dropped at once, and a message on
``clipmind:search:invalidate`` makes every other search process drop theirs (a replica learns of it a moment
later: the one that applied the change never answers from a stale entry). Keys also carry the model ids, so a
new model never meets an old ranking.

A search that missed computes its ranking from the database while a change may be committing; had it stored its
ranking after that change's invalidation, the stale ranking would outlive it. So each scope has a generation
(in this process, and ``…:gen:<scope>`` in Redis) that invalidation increments; ``get`` returns the generations
it saw (``Lookup.seen``) and ``put`` stores only if they are unchanged (in Redis, checked by the script that
writes).

Redis unreachable: the cache steps aside entirely (another process's invalidation could not be seen, so not even
L1 answers; a breaker spares each search the timeout) until Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.circuit import CircuitBreaker
from services.common.metrics import CACHE_LOOKUPS

log = logging.getLogger(__name__)

PREFIX = "clipmind:search:cache:"
CHANNEL = "clipmind:search:invalidate"
ALL = "all"


# KEYS[1]: the scope's hash, KEYS[2]: its generation; ARGV: generation seen ('' for none), field, value, ttl (s).
_PUT_IF_CURRENT = """
local gen = redis.call('GET', KEYS[2]) or ''
if gen ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""


def _scope(owner: uuid.UUID | None) -> str:
    return ALL if owner is None else str(owner)


@dataclass(frozen=True)
class Lookup:
    """A ranking found (``value``), or not (None) with the scope's generations as they were (``seen``): what
    ``put`` checks before it stores."""

    value: Any
    seen: tuple[int, bytes | None] = (0, None)


class QueryCache:
    def __init__(self, client: aioredis.Redis | None, *, l1_size: int = 1024, ttl_s: float = 3600.0,
                 encode: Callable[[Any], bytes] = bytes, decode: Callable[[bytes], Any] = bytes) -> None:
        """``encode``/``decode``: how a value goes into Redis and back (L1 keeps the value itself, so a hit in
        this process costs no decoding)."""
        self._encode, self._decode = encode, decode
        self._client = client
        self._l1: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._l1_size = l1_size
        self._ttl_s = ttl_s
        self._breaker = CircuitBreaker(1, 5.0)
        self._listener: asyncio.Task[None] | None = None
        self._gens: dict[str, int] = {}  # scope -> local generation
        self._put_script = client.register_script(_PUT_IF_CURRENT) if client is not None else None
        self.counts = {"l1": 0, "l2": 0, "miss": 0}

    @classmethod
    def from_url(cls, redis_url: str, **options: Any) -> QueryCache:
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=32, timeout=1.0, socket_connect_timeout=0.5, socket_timeout=0.5)
        return cls(aioredis.Redis(connection_pool=pool), **options)

    # -- lookups -----------------------------------------------------------------------------------------

    async def get(self, owner: uuid.UUID | None, key: str) -> Lookup:
        """The ranking stored for ``key`` in ``owner``'s scope, if any (one Redis round trip when not in L1)."""
        scope = _scope(owner)
        slot, now, local = (scope, key), time.time(), self._gens.get(scope, 0)
        if not self._usable():
            self._count("miss")
            return Lookup(None, (local, None))
        held = self._l1.get(slot)
        if held is not None and now - held[0] <= self._ttl_s:
            self._l1.move_to_end(slot)
            self._count("l1")
            return Lookup(held[1])

        async def read(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hget(PREFIX + scope, key)
                pipe.get(f"{PREFIX}gen:{scope}")
                return list(await pipe.execute())

        found = await self._redis(read)
        value, gen = found if found is not None else (None, None)
        if isinstance(value, bytes):
            stamp, _, body = value.partition(b" ")  # "<time stored> <ranking>"
            stored = float(stamp)
            if now - stored <= self._ttl_s:
                decoded = self._decode(body)
                if self._gens.get(scope, 0) == local:
                    self._remember(slot, stored, decoded)
                self._count("l2")
                return Lookup(decoded)
        self._count("miss")
        return Lookup(None, (local, gen if isinstance(gen, bytes) else None))

    async def put(self, owner: uuid.UUID | None, key: str, value: Any, seen: tuple[int, bytes | None]) -> None:
        """Store ``key``'s ranking unless ``owner``'s scope was invalidated since ``get`` saw ``seen``."""
        scope = _scope(owner)
        if self._gens.get(scope, 0) != seen[0] or not self._usable():
            return  # invalidated here meanwhile (the ranking may predate the change), or Redis is away
        now = time.time()
        self._remember((scope, key), now, value)
        script = self._put_script
        assert script is not None or self._client is None
        if script is not None:
            stored = await self._redis(lambda c: script(
                keys=[PREFIX + scope, f"{PREFIX}gen:{scope}"],
                args=[(seen[1] or b"").decode(), key, f"{now!r} ".encode() + self._encode(value), int(self._ttl_s)]))
            if stored == 0:  # another process invalidated meanwhile: not in L1 either
                self._l1.pop((scope, key), None)

    def _count(self, result: str) -> None:
        """One lookup's result (l1, l2, miss): here and in ``clipmind_search_cache_lookups_total{result}``."""
        self.counts[result] += 1
        CACHE_LOOKUPS.labels(result).inc()

    def _remember(self, slot: tuple[str, str], stored: float, value: Any) -> None:
        self._l1[slot] = (stored, value)
        self._l1.move_to_end(slot)
        while len(self._l1) > self._l1_size:
            self._l1.popitem(last=False)

    # -- invalidation ------------------------------------------------------------------------------------

    async def invalidate(self, owner: uuid.UUID) -> None:
        """``owner``'s searchable clips changed: forget their rankings and the administrators', everywhere."""
        scopes = {_scope(owner), ALL}
        self._drop(scopes)

        async def broadcast(client: aioredis.Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for scope in sorted(scopes):
                    pipe.incr(f"{PREFIX}gen:{scope}")
                    pipe.expire(f"{PREFIX}gen:{scope}", int(self._ttl_s) + 60)
                pipe.delete(*(PREFIX + s for s in scopes))
                pipe.publish(CHANNEL, json.dumps(sorted(scopes)))
                await pipe.execute()

        await self._redis(broadcast)

    def _usable(self) -> bool:
        """Whether invalidations can be seen: no Redis at all (one process, tests), or Redis answering."""
        return self._client is None or self._breaker.state == "closed"

    def _drop(self, scopes: set[str]) -> None:
        for scope in scopes:
            self._gens[scope] = self._gens.get(scope, 0) + 1
        for slot in [s for s in self._l1 if s[0] in scopes]:
            del self._l1[slot]

    def _forget_all(self) -> None:
        """Invalidations may have been missed (no Redis): every scope's entries go, and stores in flight too."""
        self._drop({scope for scope, _ in self._l1} | set(self._gens))

    async def start(self) -> None:
        """Listen for other processes' invalidations (reconnecting while Redis is away)."""
        if self._client is not None and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="query-cache-invalidations")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._client is not None:
            await self._client.aclose()

    async def _listen(self) -> None:
        assert self._client is not None
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._forget_all()  # whatever was missed while not subscribed
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._drop(set(json.loads(message["data"])))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                log.warning("query cache invalidations not received (%s); retrying in 1 s", type(exc).__name__)
                self._forget_all()
                await asyncio.sleep(1.0)

    async def _redis(self, call: Any) -> Any:
        if self._client is None or not self._breaker.allow():
            return None
        try:
            result = await call(self._client)
        except (RedisError, OSError) as exc:
            if self._breaker.state == "closed":
                log.warning("query cache without Redis for now (%s): searches are not cached across processes",
                            type(exc).__name__)
            self._breaker.record_failure()
            self._forget_all()  # an invalidation may be missed while Redis is away
            return None
        self._breaker.record_success()
        return result
