"""Who is calling: a bearer credential (access token or API key) turned into a ``Principal``, in every service.

* **Access tokens** (JWT, HS256) are verified *locally* with the signing keys every service is given
  (``CLIPMIND_JWT_KEYS``, see ``services.common.tokens``), then checked against the revocation marks in Redis
  (``services.common.revocations``: signed out, user deleted). No call to identity is made, so authentication
  costs a signature check (cached per token) and a Redis read, which the server makes in the same script call
  that counts the request against the user's rate limits (``Pending``).
* **API keys** (``cmk_…``) are opaque: the first use asks identity (``ApiKeyResolver``, an internal RPC) who the
  key belongs to, and the answer is cached in the process for ``API_KEY_CACHE_S``. The revocation marks are
  read on every call as for tokens, so a revoked key or a deleted user is refused at once, not when the cache
  entry ages out.
* **The system identity.** Services and workers call each other as the ``system`` role with a token they sign
  themselves (``SystemCredentials``); it is never revocable and cannot be had by signing in.

Every refusal is ``Unauthenticated`` with a reason (``CREDENTIALS_REQUIRED``, ``BAD_AUTHORIZATION``,
``TOKEN_INVALID``, ``TOKEN_EXPIRED``, ``TOKEN_REVOKED``, ``USER_REVOKED``, ``API_KEY_INVALID``) and a message
that never contains the credential.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from services.common.config import CommonSettings
from services.common.errors import Unauthenticated
from services.common.principal import SYSTEM_USER_ID, Principal
from services.common.revocations import NOTHING_KNOWN, Verdict, marks_of
from services.common.tokens import Claims, TokenSigner, load_keys

log = logging.getLogger(__name__)

API_KEY_PREFIX = "cmk_"
API_KEY_CACHE_S = 30.0
API_KEY_CACHE_SIZE = 10_000
MAX_CREDENTIAL_CHARS = 8192
VERIFIED_CACHE_SIZE = 10_000
SYSTEM_TOKEN_RENEW_S = 120.0  # a system token is replaced this long before it expires


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: who (``principal``) and, for an access token, its verified claims."""

    principal: Principal
    claims: Claims | None = None


class ApiKeyResolver(Protocol):
    async def resolve(self, key: str) -> Principal | None:
        """The user an API key acts as, or None when it is unknown, revoked, or its user is gone."""


class RevocationCheck(Protocol):
    async def check(self, user_id: uuid.UUID, *, token_id: str | None = None,
                    api_key_digest: str | None = None) -> Verdict: ...


@dataclass(frozen=True)
class Pending:
    """A credential's claimed caller, not yet confirmed: the revocation marks to look at (``marks``: the Redis keys
    of ``revocations.marks_of``; empty when there is nothing to confirm, as for the system identity) and what the
    marks decide (``decide``: the confirmed caller, or UNAUTHENTICATED). The server reads the marks together with
    the call's rate limits (one Redis round trip); ``Authenticator.confirm`` reads them alone."""

    claimed: Caller
    user_id: uuid.UUID
    token_id: str | None
    api_key_digest: str | None
    decide: Callable[[Verdict], Awaitable[Caller]]

    @property
    def marks(self) -> tuple[str, ...]:
        if self.token_id is None and self.api_key_digest is None:
            return ()
        return marks_of(self.user_id, token_id=self.token_id, api_key_digest=self.api_key_digest)


def key_digest(key: str) -> str:
    """How an API key is named in revocation marks and caches: its SHA-256 (keys are 256-bit random values)."""
    return hashlib.sha256(key.encode()).hexdigest()


def signer_from(spec: str, *, issuer: str, audience: str, access_ttl_s: float = 900.0) -> TokenSigner:
    """The token signer of a ``CLIPMIND_JWT_KEYS`` value; ``ValueError`` when it is empty or a key is weak."""
    keys, active = load_keys(spec)
    return TokenSigner(keys, active_kid=active, issuer=issuer, audience=audience, access_ttl_s=access_ttl_s)


def parse_authorization(value: str | bytes) -> str:
    """The credential of an ``authorization: Bearer <credential>`` value; UNAUTHENTICATED otherwise."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    scheme, _, credential = text.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or len(credential) > MAX_CREDENTIAL_CHARS:
        raise Unauthenticated("authorization must be `Bearer <access token or API key>`",
                              reason="BAD_AUTHORIZATION")
    return credential


class Authenticator:
    def __init__(self, signer: TokenSigner, revocations: RevocationCheck, api_keys: ApiKeyResolver | None, *,
                 api_key_cache_s: float = API_KEY_CACHE_S) -> None:
        self._signer = signer
        self._revocations = revocations
        self._api_keys = api_keys
        self._cache_s = api_key_cache_s
        # digest → (principal, monotonic time of the answer, wall time of the answer)
        self._cache: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    async def authenticate(self, credential: str) -> Caller:
        """The caller of a credential, or UNAUTHENTICATED (with the reason)."""
        return await self.confirm(await self.begin(credential))

    async def confirm(self, pending: Pending) -> Caller:
        """``pending``'s caller once its revocation marks are read (alone: one Redis round trip)."""
        if not pending.marks:
            return await pending.decide(NOTHING_KNOWN)
        return await pending.decide(await self._revocations.check(
            pending.user_id, token_id=pending.token_id, api_key_digest=pending.api_key_digest))

    async def begin(self, credential: str) -> Pending:
        """Who a credential claims to be (signature and expiry checked, or the API key's cached owner), and what
        confirms it (its revocation marks, in Redis). Split so that the server can read the marks in the same
        Redis call that counts the call against the caller's rate limits: one round trip, not two."""
        if credential.startswith(API_KEY_PREFIX):
            principal, digest, answered_at = await self._api_key_owner(credential)

            async def decide_key(verdict: Verdict) -> Caller:
                return await self._decide_api_key(credential, principal, digest, answered_at, verdict)

            return Pending(Caller(principal), principal.user_id, None, digest, decide_key)
        claims = self._verify(credential)
        caller = Caller(Principal(claims.user_id, claims.role), claims)
        if claims.role == "system":
            # Only services hold the signing keys; a system token is never revoked (and so never needs Redis,
            # which keeps the mesh's own calls going while Redis is away).
            if claims.user_id != SYSTEM_USER_ID:
                raise Unauthenticated("access token refused: malformed system identity", reason="TOKEN_INVALID")

            async def as_is(_: Verdict) -> Caller:
                return caller

            return Pending(caller, claims.user_id, None, None, as_is)

        async def decide_token(verdict: Verdict) -> Caller:
            return self._decide_token(caller, verdict)

        return Pending(caller, claims.user_id, claims.jti, None, decide_token)

    def _verify(self, token: str) -> Claims:
        """The token's claims. A token verified before is taken from a small cache (its expiry still checked):
        the signature check costs ~0.2 ms of CPU on every call otherwise, and a client sends the same token for
        its whole lifetime. Only verified tokens are cached, keyed by the whole token."""
        claims = self._verified.get(token)
        if claims is not None and claims.expires_at.timestamp() > time.time():
            self._verified.move_to_end(token)
            return claims
        self._verified.pop(token, None)
        claims = self._signer.verify(token)
        self._verified[token] = claims
        while len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    @staticmethod
    def _decide_token(caller: Caller, verdict: Verdict) -> Caller:
        claims = caller.claims
        assert claims is not None
        if verdict.revoked:
            raise Unauthenticated("this access token was revoked (signed out); sign in again",
                                  reason="TOKEN_REVOKED")
        if verdict.user_revoked_at is not None and claims.issued_at.timestamp() <= verdict.user_revoked_at:
            raise Unauthenticated("the user of this access token was deleted or changed; sign in again",
                                  reason="USER_REVOKED")
        return caller

    async def _api_key_owner(self, key: str) -> tuple[Principal, str, float]:
        """The key's owner (cached for ``api_key_cache_s``, else asked of identity), its digest, when answered."""
        if self._api_keys is None:
            raise Unauthenticated("API keys are not accepted here", reason="API_KEY_INVALID")
        digest = key_digest(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] > self._cache_s:
            cached = None
        if cached is None:
            cached = await self._lookup(key, digest, now)
        principal, _, answered_at = cached
        return principal, digest, answered_at

    async def _decide_api_key(self, key: str, principal: Principal, digest: str, answered_at: float,
                              verdict: Verdict) -> Caller:
        if verdict.revoked:
            self._cache.pop(digest, None)
            raise Unauthenticated("API key unknown or revoked", reason="API_KEY_INVALID")
        if verdict.user_revoked_at is not None and answered_at <= verdict.user_revoked_at:
            # The user changed (deleted, new role) after identity answered: ask again.
            principal, _, _ = await self._lookup(key, digest, time.monotonic())
        return Caller(principal)

    async def _lookup(self, key: str, digest: str, now: float) -> tuple[Principal, float, float]:
        assert self._api_keys is not None
        self._cache.pop(digest, None)
        principal = await self._api_keys.resolve(key)
        if principal is None:
            raise Unauthenticated("API key unknown or revoked", reason="API_KEY_INVALID")
        entry = (principal, now, time.time())
        self._cache[digest] = entry
        while len(self._cache) > API_KEY_CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry


class SystemCredentials:
    """The ``authorization`` value of this process's internal calls: a ``system`` token it signs itself,
    renewed shortly before it expires."""

    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer
        self._value = ""
        self._renew_at = 0.0

    def authorization(self) -> str:
        now = time.time()
        if now >= self._renew_at:
            token, claims = self._signer.issue(SYSTEM_USER_ID, "system")
            lifetime = claims.expires_at.timestamp() - now
            self._value = f"Bearer {token}"
            self._renew_at = now + max(lifetime - SYSTEM_TOKEN_RENEW_S, lifetime / 2)
        return self._value


def settings_signer(settings: CommonSettings) -> TokenSigner:
    """The signer of ``CLIPMIND_JWT_KEYS``; a startup error (never a warning) when unset or a key is weak."""
    spec = settings.jwt_keys.get_secret_value()
    if not spec:
        raise SystemExit("CLIPMIND_JWT_KEYS is not set: callers cannot be authenticated (`clipmind up` makes one)")
    try:
        return signer_from(spec, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                           access_ttl_s=settings.access_token_ttl_s)
    except ValueError as exc:
        raise SystemExit(f"CLIPMIND_JWT_KEYS: {exc}") from None
