"""The query cache (``services/search/query_cache.py``) on real Redis and PostgreSQL, through the search domain: a
cached search returns the same page as the uncached one without retrieving again; a new READY video of the owner
changes the answer on the next call; another process's invalidation reaches this one; a ranking computed before
an invalidation is not stored after it; a different user never sees another's cached ranking."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.common.principal import Principal
from services.search.clip_store import ClipStore
from services.search.internal_servicer import SearchInternalServicer
from services.search.query_cache import QueryCache
from services.search.retrieval import PgRetrieval
from services.search.searcher import Searcher, SearchQuery, decode_ranking, encode_ranking
from services.search.vectors import PgVectorIndex
from tests.db_setup import ServicerStub, service_db
from tests.integration.test_search_lexical import Library
from tests.integration.test_search_ownership import Logged

pytestmark = pytest.mark.integration

SCENE = [(0.0, 10.0, [(1.0, 4.0, "the harbour at dawn with fishing boats")])]


class Counting(PgRetrieval):
    """The real retrieval, counting its statements (a cached search makes none)."""

    calls = 0

    async def lexical(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        Counting.calls += 1
        return await super().lexical(*args, **kwargs)


@pytest.fixture
async def world(pg_dsn: str, redis_url: str) -> AsyncIterator[tuple[Library, QueryCache, Searcher]]:
    db = await service_db(pg_dsn, "search")
    cache = QueryCache.from_url(redis_url, encode=encode_ranking, decode=decode_ranking)
    await cache.start()
    try:
        lib = Library(db)
        lib.internal = ServicerStub(SearchInternalServicer(ClipStore(db), cache))
        searcher = Searcher(ClipStore(db), Counting(db), PgVectorIndex(db), lib.models,  # type: ignore[arg-type]
                            Logged(), cache=cache)
        yield lib, cache, searcher
    finally:
        await cache.close()
        await db.close()


async def test_a_cached_search_is_the_same_page_and_a_new_ready_video_changes_it(
    world: tuple[Library, QueryCache, Searcher],
) -> None:
    lib, cache, searcher = world
    first_video = await lib.index(lib.alice, SCENE, seed=1)
    lib.aim("Harbour  at DAWN", SCENE[0][2][0][2])
    lib.aim("harbour at dawn", SCENE[0][2][0][2])
    query = SearchQuery(text="Harbour  at DAWN", min_score=-1.0)
    Counting.calls = 0

    uncached = await searcher.search(query, lib.alice)
    assert [h.clip.video_id for h in uncached.hits] == [first_video] and Counting.calls == 1
    again = await searcher.search(SearchQuery(text="harbour at dawn", min_score=-1.0), lib.alice)  # same, normalized
    assert Counting.calls == 1 and cache.counts["l1"] == 1, "answered from the cache"
    assert [(h.clip.id, h.score, h.matched_text, h.match_start_s, h.signals) for h in again.hits] == [
        (h.clip.id, h.score, h.matched_text, h.match_start_s, h.signals) for h in uncached.hits]
    assert "cache" in again.timings and "transcript" not in again.timings
    elsewhere = QueryCache(cache._client, encode=encode_ranking, decode=decode_ranking)  # another process: from Redis
    from_redis = [k for (scope, k) in cache._l1 if scope == str(lib.alice.user_id)]
    assert len(from_redis) == 1
    found = await elsewhere.get(lib.alice.user_id, from_redis[0])
    assert found.value is not None and [r.clip_id for r in found.value] == [h.clip.id for h in uncached.hits]

    bob = Principal(uuid.uuid4(), "user")  # another user's same query is their own (empty) ranking
    assert (await searcher.search(query, bob)).hits == [] and Counting.calls == 2

    second_video = await lib.index(lib.alice, SCENE, seed=5)  # READY: Alice's searchable clips changed
    after = await searcher.search(query, lib.alice)
    assert Counting.calls == 3
    assert {h.clip.video_id for h in after.hits} == {first_video, second_video}


async def test_invalidation_reaches_other_processes_and_beats_a_ranking_in_flight(redis_url: str) -> None:
    one, other = QueryCache.from_url(redis_url), QueryCache.from_url(redis_url)
    await one.start()
    await other.start()
    owner = uuid.uuid4()
    try:
        await asyncio.sleep(0.2)  # both subscribed
        missed = await one.get(owner, "q")
        assert missed.value is None
        await one.put(owner, "q", b"ranking", missed.seen)
        assert (await one.get(owner, "q")).value == b"ranking"  # L1
        assert (await other.get(owner, "q")).value == b"ranking"  # from Redis (L2), now in its L1 too

        await other.invalidate(owner)
        for _ in range(100):  # the message reaches the first process
            if (await one.get(owner, "q")).value is None:
                break
            await asyncio.sleep(0.02)
        assert (await one.get(owner, "q")).value is None
        assert (await other.get(None, "q")).value is None

        # A ranking computed from the database before an invalidation is not stored after it.
        missed = await one.get(owner, "late")
        await other.invalidate(owner)
        await one.put(owner, "late", b"stale", missed.seen)
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await client.hget(f"clipmind:search:cache:{owner}", "late") is None
        finally:
            await client.aclose()
        for _ in range(100):
            if (await one.get(owner, "late")).value is None:
                break
            await asyncio.sleep(0.02)
        assert (await one.get(owner, "late")).value is None
    finally:
        await one.close()
        await other.close()


async def test_without_redis_the_cache_steps_aside() -> None:
    cache = QueryCache.from_url("redis://127.0.0.1:1/0")  # nothing listens there
    owner = uuid.uuid4()
    missed = await cache.get(owner, "q")
    assert missed.value is None
    await cache.put(owner, "q", b"r", missed.seen)
    assert (await cache.get(owner, "q")).value is None, "no cache while invalidations cannot be seen"
    await cache.invalidate(owner)
    await cache.close()
