"""Revoked credentials, shared through Redis so that every service refuses them without asking identity.

Access tokens are verified locally by every service (``services.common.auth``); what a signature cannot tell
is that a token was signed out, that its user was deleted, or that an API key was revoked. Identity (the only
writer) records those here, and every check reads them in **one** round trip (on the server, the same one that
counts the call against the user's rate limits):

* ``clipmind:revoked:token:<jti>``: the access token with this id was signed out; kept until it expires.
* ``clipmind:revoked:key:<sha256 hex>``: the API key with this digest was revoked; kept as long as a service
  may cache the key's owner (``KEY_MARK_TTL_S``), after which a lookup at identity finds it gone anyway.
* ``clipmind:revoked:user:<uuid>``: the user was deleted (or their role changed) at this Unix time: their
  tokens issued up to then, and any API-key answer a service cached before then, no longer count. Kept as long
  as an access token lives.

The durable record stays in identity's own tables; identity writes these marks again from there every minute,
so a Redis that lost its data (a restart without persistence) has them back within a minute.

When Redis is unreachable a check fails open: the credential's signature, expiry and (for API keys) identity's
own answer still hold, only a sign-out or deletion in the last minutes is not seen, and a warning is logged.
The alternative, refusing every call of every user while Redis is away, would make Redis a single point of
failure of the whole API. A circuit breaker keeps an unreachable Redis from costing each call its timeout.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.circuit import CircuitBreaker

log = logging.getLogger(__name__)

PREFIX = "clipmind:revoked:"
KEY_MARK_TTL_S = 600.0  # well over any service's API-key cache (auth.API_KEY_CACHE_S)
USER_MARK_TTL_S = 3600.0 + 60.0  # the longest an access token may live (IdentitySettings), plus leeway


@dataclass(frozen=True)
class Verdict:
    """What Redis knows of one credential: revoked itself, and when (Unix time) its user was last revoked."""

    revoked: bool = False
    user_revoked_at: float | None = None


NOTHING_KNOWN = Verdict()


def _token_key(jti: str) -> str:
    return f"{PREFIX}token:{jti}"


def _api_key_key(digest_hex: str) -> str:
    return f"{PREFIX}key:{digest_hex}"


def _user_key(user_id: uuid.UUID) -> str:
    return f"{PREFIX}user:{user_id}"


def marks_of(user_id: uuid.UUID, *, token_id: str | None = None,
             api_key_digest: str | None = None) -> tuple[str, str]:
    """The Redis keys of a credential's marks: its own (token or API key), then its user's."""
    own = _token_key(token_id) if token_id is not None else _api_key_key(api_key_digest or "")
    return own, _user_key(user_id)


def verdict_of(mark: bytes | str | None, user_mark: bytes | str | None) -> Verdict:
    """What the values of ``marks_of``'s keys say (None: no such key)."""
    revoked_at = None
    if user_mark is not None:
        try:
            revoked_at = float(user_mark)
        except ValueError:
            revoked_at = math.inf  # not ours to misread: treat the user as revoked
    return Verdict(revoked=mark is not None, user_revoked_at=revoked_at)


class Revocations:
    """Reads (every service) and writes (identity) the revocation marks. The server interceptor reads them in
    the same Redis call as the rate limits (``request_limits.RequestLimiter.count``, with ``marks_of`` and
    ``verdict_of``); ``check`` reads them alone."""

    def __init__(self, client: aioredis.Redis, *, breaker: CircuitBreaker | None = None) -> None:
        self._client = client
        self._breaker = breaker or CircuitBreaker(1, 5.0)

    @classmethod
    def from_url(cls, redis_url: str, *, max_connections: int = 64) -> Revocations:
        """Short timeouts: a check is on the path of every call; a slow Redis must not make it slow for long."""
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=max_connections, timeout=1.0, socket_connect_timeout=0.5,
            socket_timeout=0.5)
        return cls(aioredis.Redis(connection_pool=pool))

    async def close(self) -> None:
        await self._client.aclose()

    # -- reading -----------------------------------------------------------------------------------------

    async def check(self, user_id: uuid.UUID, *, token_id: str | None = None,
                    api_key_digest: str | None = None) -> Verdict:
        """The marks of a token (``token_id``) or an API key (``api_key_digest``) and of its user."""
        if not self._breaker.allow():
            return NOTHING_KNOWN
        try:
            mark, user_mark = await self._client.mget(
                list(marks_of(user_id, token_id=token_id, api_key_digest=api_key_digest)))
        except (RedisError, OSError) as exc:
            self._breaker.record_failure()
            log.warning("revocations not checked for %.0f s, Redis is unreachable (%s)",
                        self._breaker.retry_after_s(), type(exc).__name__)
            return NOTHING_KNOWN
        self._breaker.record_success()
        return verdict_of(mark, user_mark)

    # -- writing (identity) ------------------------------------------------------------------------------

    async def revoke_token(self, jti: str, expires_at: datetime) -> None:
        """Mark a signed-out access token until it expires (a second past, for clock differences)."""
        ttl_ms = int((expires_at.timestamp() - time.time() + 1) * 1000)
        if ttl_ms > 0:
            await self._client.set(_token_key(jti), b"1", px=ttl_ms)

    async def revoke_api_key(self, digest_hex: str) -> None:
        await self._client.set(_api_key_key(digest_hex), b"1", px=int(KEY_MARK_TTL_S * 1000))

    async def revoke_user(self, user_id: uuid.UUID, at: float | None = None) -> None:
        """Mark every credential of ``user_id`` issued (or looked up) up to ``at`` (now) as no longer valid."""
        at = time.time() if at is None else at
        await self._client.set(_user_key(user_id), repr(at).encode(), px=int(USER_MARK_TTL_S * 1000))
