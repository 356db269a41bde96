"""One Redis connection per process on which every caller's commands are pipelined: the per-request path.

The authentication interceptor makes one Redis call per request (``services.common.rate_limit``: count the call
against the user's windows and read the credential's revocation marks). Through redis-py's asyncio client that
call cost ~0.96 ms p50 inside the loaded search process, where a raw socket round trip cost ~0.13 ms
(docs/benchmarks.md, "Authentication under 1 ms"): per command redis-py takes a connection from its pool (a lock,
a condition, a timer for the pool's wait and one for the socket timeout), wraps it in retry and
deprecation-argument checks, and gives it back. None of that buys anything for a pipelined connection: Redis
answers commands on one connection in the order they were sent, so concurrent callers can all write to one socket
and each take the next reply. Redis-py does not pipeline independent callers, and the other asyncio clients
(coredis) would be a second Redis library beside redis-py, which the rest of the project uses. So this is the
thin layer written here: hiredis (the C parser redis-py itself uses) packs the commands and parses the replies;
what is ours is the queue of waiting callers and the reconnection.

Errors are redis-py's (``redis.exceptions``): a reply error is ``ResponseError``, an unreachable or dropped server
``ConnectionError``, a late reply ``TimeoutError`` (all ``RedisError``), so callers handle both clients alike.
A timeout or a dropped connection fails every waiting caller and closes the connection (a reply that never came
would shift every later reply onto the wrong caller); the next command connects again.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


def _pack(command: tuple[Arg, ...]) -> bytes:
    # hiredis's stub types its argument as a 1-tuple; it takes a tuple of any length.
    return hiredis.pack_command(cast(Any, command))


class _Protocol(asyncio.Protocol):
    """The connection: writes commands, hands each parsed reply to the oldest waiting caller."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.closed = False
        self._reader = hiredis.Reader(replyError=ResponseError)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, command: bytes) -> asyncio.Future[Any]:
        assert self.transport is not None
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(reply)
        self.transport.write(command)
        return reply

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: the stream cannot be trusted any more
                self.fail(RedisConnectionError("Redis sent a reply that no command asked for"))
                return
            waiter = self.waiting.popleft()
            if waiter.done():  # its caller was cancelled; the reply is still its own
                continue
            if isinstance(reply, ResponseError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis closed the connection ({exc or 'by the server'})"))

    def fail(self, error: Exception) -> None:
        """Close the connection and fail every caller still waiting on it."""
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class RedisPipe:
    """Commands of all callers of a process on one pipelined connection (``redis://``, ``rediss://`` or
    ``unix://`` URLs with user, password and db as redis-py reads them)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 2.0, timeout_s: float = 2.0) -> None:
        options = parse_url(url)
        self._host = options.get("host", "127.0.0.1")
        self._port = int(options.get("port", 6379))
        self._path = options.get("path")
        self._ssl = url.startswith("rediss://")
        self._hello: list[tuple[Arg, ...]] = []
        if options.get("password"):
            user = options.get("username")
            self._hello.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if int(options.get("db") or 0):
            self._hello.append(("SELECT", int(options["db"])))
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply (hiredis types: bytes, int, list, None)."""
        protocol = self._protocol
        if protocol is None or protocol.closed or protocol.transport is None or protocol.transport.is_closing():
            protocol = await self._connect()
        reply = protocol.send(_pack(args))
        try:
            async with asyncio.timeout(self._timeout_s):
                return await reply  # a cancelled caller's reply is skipped when it comes
        except TimeoutError:
            protocol.fail(RedisTimeoutError(f"no reply from Redis within {self._timeout_s:g} s"))
            raise RedisTimeoutError(f"no reply from Redis within {self._timeout_s:g} s") from None

    def script(self, source: str) -> Script:
        return Script(self, source)

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("closed"))
            self._protocol = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connection, however many callers find it missing at once
            current = self._protocol
            if current is not None and not current.closed and current.transport is not None \
                    and not current.transport.is_closing():
                return current
            loop = asyncio.get_running_loop()
            protocol: _Protocol | None = None
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    if self._path:
                        _, protocol = await loop.create_unix_connection(_Protocol, self._path)
                    else:
                        context = ssl.create_default_context() if self._ssl else None
                        _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=context)
                    for command in self._hello:  # AUTH, SELECT: their replies come before any caller's
                        await protocol.send(_pack(command))
            except BaseException as exc:
                if protocol is not None:
                    protocol.fail(RedisConnectionError("closed while connecting"))
                if isinstance(exc, TimeoutError):
                    raise RedisConnectionError(
                        f"could not connect to Redis within {self._connect_timeout_s:g} s") from None
                if isinstance(exc, ResponseError):
                    raise RedisConnectionError(f"Redis refused the connection: {exc}") from exc
                if isinstance(exc, OSError):
                    raise RedisConnectionError(f"could not connect to Redis: {exc}") from exc
                raise
            self._protocol = protocol
            return protocol


class Script:
    """A Lua script run by its SHA1 (``EVALSHA``); sent whole once when the server does not know it yet."""

    def __init__(self, pipe: RedisPipe, source: str) -> None:
        self._pipe = pipe
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await self._pipe.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._pipe.execute("EVAL", self._source, len(keys), *keys, *args)
