"""The pipelined Redis connection (services.common.redis_pipe) against a real redis-server: every caller gets its
own reply, whatever happens to the callers or the connection in between."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.redis_pipe import RedisPipe
from services.launcher import free_port

pytestmark = pytest.mark.integration


async def test_concurrent_callers_each_get_their_own_reply(redis_url: str) -> None:
    pipe = RedisPipe(redis_url)
    try:
        values = [f"value-{i}-{uuid.uuid4().hex}" for i in range(500)]
        replies = await asyncio.gather(*(pipe.execute("ECHO", v) for v in values))
        assert replies == [v.encode() for v in values]
        key = f"test-pipe:{uuid.uuid4().hex}"
        counts = await asyncio.gather(*(pipe.execute("INCR", key) for _ in range(200)))
        assert sorted(counts) == list(range(1, 201))  # one connection, each INCR answered once
        with pytest.raises(ResponseError):  # a reply error goes to its caller only
            await pipe.execute("NOT-A-COMMAND")
        assert await pipe.execute("ECHO", "after") == b"after"
    finally:
        await pipe.aclose()


async def test_a_cancelled_caller_does_not_shift_the_replies(redis_url: str) -> None:
    pipe = RedisPipe(redis_url)
    try:
        blocked = asyncio.create_task(pipe.execute("BLPOP", f"test-pipe:empty:{uuid.uuid4().hex}", "0.5"))
        await asyncio.sleep(0.1)
        blocked.cancel()
        # Its reply (nil, after 0.5 s) is still on the way: the next caller must get its own, not that one.
        assert await pipe.execute("ECHO", "mine") == b"mine"
    finally:
        await pipe.aclose()


async def test_a_late_reply_times_out_and_the_next_command_reconnects(redis_url: str) -> None:
    pipe = RedisPipe(redis_url, timeout_s=0.3)
    try:
        with pytest.raises(RedisTimeoutError):
            await pipe.execute("BLPOP", f"test-pipe:empty:{uuid.uuid4().hex}", "1")
        assert await pipe.execute("ECHO", "next") == b"next"
    finally:
        await pipe.aclose()


async def test_a_dropped_connection_fails_its_callers_and_the_next_command_reconnects(redis_url: str) -> None:
    pipe = RedisPipe(redis_url)
    admin = aioredis.from_url(redis_url)
    try:
        name = f"pipe-{uuid.uuid4().hex[:8]}"
        await pipe.execute("CLIENT", "SETNAME", name)
        waiting = asyncio.create_task(pipe.execute("BLPOP", f"test-pipe:empty:{uuid.uuid4().hex}", "5"))
        await asyncio.sleep(0.1)
        clients = await admin.client_list()
        assert await admin.client_kill_filter(_id=next(c["id"] for c in clients if c["name"] == name)) == 1
        with pytest.raises(RedisConnectionError):
            await waiting
        assert await pipe.execute("ECHO", "again") == b"again"
    finally:
        await pipe.aclose()
        await admin.aclose()


async def test_scripts_run_by_sha_and_are_sent_again_after_a_flush(redis_url: str) -> None:
    pipe = RedisPipe(redis_url)
    try:
        add = pipe.script("return tonumber(ARGV[1]) + tonumber(ARGV[2])")
        assert await add(keys=[], args=[2, 3]) == 5
        await pipe.execute("SCRIPT", "FLUSH")
        assert await add(keys=[], args=[4, 5]) == 9  # NOSCRIPT, then the whole script
    finally:
        await pipe.aclose()


async def test_a_wrong_password_or_no_server_is_a_connection_error(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    wrong = urlunsplit(parts._replace(netloc=f":wrong@{parts.hostname}:{parts.port}"))
    pipe = RedisPipe(wrong)
    with pytest.raises(RedisConnectionError, match="refused"):
        await pipe.execute("PING")
    nobody = RedisPipe(f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=0.5)
    with pytest.raises(RedisConnectionError, match="could not connect"):
        await nobody.execute("PING")
