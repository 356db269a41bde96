"""Who may call what: the authenticator (tokens, API keys, revocations) and the interceptor's policy per method.

The revocation list and the API-key lookup are in-memory stand-ins of their Protocols here; the same paths run
against real Redis and a real identity service in tests/integration/test_authentication.py and the e2e suite.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.common.auth import Authenticator, SystemCredentials, key_digest, parse_authorization
from services.common.auth_interceptor import AuthInterceptor
from services.common.errors import Unauthenticated
from services.common.principal import SYSTEM_USER_ID, Principal
from services.common.revocations import Verdict
from services.common.tokens import TokenSigner

KEY = b"s" * 32
INTERNAL = "/clipmind.search.internal.v1.SearchInternalService/ReplaceVideoIndex"
PUBLIC = "/clipmind.search.v1.SearchService/Search"
OPTIONAL = "/clipmind.identity.v1.IdentityService/Login"


class Marks:
    """The revocation marks, as ``services.common.revocations.Revocations`` keeps them in Redis."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.keys: set[str] = set()
        self.users: dict[uuid.UUID, float] = {}
        self.checks = 0

    async def check(self, user_id: uuid.UUID, *, token_id: str | None = None,
                    api_key_digest: str | None = None) -> Verdict:
        self.checks += 1
        revoked = token_id in self.tokens if token_id is not None else api_key_digest in self.keys
        return Verdict(revoked=revoked, user_revoked_at=self.users.get(user_id))


class Keys:
    def __init__(self) -> None:
        self.owners: dict[str, Principal] = {}
        self.lookups = 0

    async def resolve(self, key: str) -> Principal | None:
        self.lookups += 1
        return self.owners.get(key)


@pytest.fixture
def parts() -> tuple[TokenSigner, Marks, Keys, Authenticator]:
    signer = TokenSigner({"k1": KEY}, active_kid="k1")
    marks, keys = Marks(), Keys()
    return signer, marks, keys, Authenticator(signer, marks, keys)


async def _refusal(auth: Authenticator, credential: str) -> str:
    with pytest.raises(Unauthenticated) as err:
        await auth.authenticate(credential)
    assert credential not in err.value.message
    return err.value.reason


async def test_tokens_are_checked_against_revocations(parts) -> None:  # type: ignore[no-untyped-def]
    signer, marks, _, auth = parts
    user = uuid.uuid4()
    token, claims = signer.issue(user, "user")
    caller = await auth.authenticate(token)
    assert caller.principal == Principal(user, "user") and caller.claims == claims
    marks.tokens.add(claims.jti)
    assert await _refusal(auth, token) == "TOKEN_REVOKED"
    marks.tokens.clear()
    marks.users[user] = claims.issued_at.timestamp()  # deleted the second the token was issued
    assert await _refusal(auth, token) == "USER_REVOKED"
    later, _ = signer.issue(user, "user", now=datetime.now(UTC) + timedelta(seconds=2))
    assert (await auth.authenticate(later)).principal.user_id == user  # issued after: not void


async def test_the_system_identity_needs_no_revocation_check(parts) -> None:  # type: ignore[no-untyped-def]
    signer, marks, _, auth = parts
    token = SystemCredentials(signer).authorization().removeprefix("Bearer ")
    assert (await auth.authenticate(token)).principal == Principal(SYSTEM_USER_ID, "system")
    assert marks.checks == 0  # so the mesh's own calls go on while Redis is away
    forged, _ = signer.issue(uuid.uuid4(), "system")  # a system role on a user id is not the system
    assert await _refusal(auth, forged) == "TOKEN_INVALID"


async def test_api_keys_are_cached_but_revocations_seen_at_once(parts) -> None:  # type: ignore[no-untyped-def]
    _, marks, keys, auth = parts
    owner = Principal(uuid.uuid4(), "user")
    keys.owners["cmk_alpha"] = owner
    for _ in range(3):
        assert (await auth.authenticate("cmk_alpha")).principal == owner
    assert keys.lookups == 1 and marks.checks == 3
    assert await _refusal(auth, "cmk_unknown") == "API_KEY_INVALID"
    marks.users[owner.user_id] = time.time()  # the user changed after identity answered: ask again
    keys.owners["cmk_alpha"] = Principal(owner.user_id, "admin")
    assert (await auth.authenticate("cmk_alpha")).principal.role == "admin"
    assert keys.lookups == 3
    marks.keys.add(key_digest("cmk_alpha"))
    assert await _refusal(auth, "cmk_alpha") == "API_KEY_INVALID"


async def test_cached_api_key_answers_age_out(parts) -> None:  # type: ignore[no-untyped-def]
    signer, marks, keys, _ = parts
    auth = Authenticator(signer, marks, keys, api_key_cache_s=0.0)
    keys.owners["cmk_beta"] = Principal(uuid.uuid4(), "user")
    await auth.authenticate("cmk_beta")
    del keys.owners["cmk_beta"]  # revoked while Redis was away: the next lookup finds out
    await asyncio.sleep(0.01)
    assert await _refusal(auth, "cmk_beta") == "API_KEY_INVALID"


@pytest.mark.parametrize("value", ["Basic abc", "Bearer", "Bearer ", "bearer" + " x" * 5000, "token"])
def test_authorization_header_forms(value: str) -> None:
    with pytest.raises(Unauthenticated) as err:
        parse_authorization(value)
    assert err.value.reason == "BAD_AUTHORIZATION"


def test_authorization_scheme_is_case_insensitive() -> None:
    assert parse_authorization(" bearer  abc ") == "abc"


async def test_policy_per_method(parts) -> None:  # type: ignore[no-untyped-def]
    signer, _, _, auth = parts
    interceptor = AuthInterceptor(auth, optional_methods=[OPTIONAL])
    user_token, _ = signer.issue(uuid.uuid4(), "user")
    system = SystemCredentials(signer).authorization()
    other = TokenSigner({"k1": b"o" * 32}, active_kid="k1").issue(uuid.uuid4(), "user")[0]

    async def reason(metadata: list[tuple[str, str]], method: str) -> str:
        try:
            caller = await interceptor.authenticate(metadata, method)
        except Unauthenticated as exc:
            return exc.reason
        return "ok" if caller is not None else "anonymous"

    bearer = [("authorization", f"Bearer {user_token}")]
    assert await reason([], INTERNAL) == "SERVICE_IDENTITY_REQUIRED"
    assert await reason(bearer, INTERNAL) == "SERVICE_IDENTITY_INVALID"
    assert await reason([("authorization", f"Bearer {other}")], INTERNAL) == "SERVICE_IDENTITY_INVALID"
    assert await reason([("authorization", system)], INTERNAL) == "ok"
    assert await reason([], PUBLIC) == "CREDENTIALS_REQUIRED"
    assert await reason([("authorization", "Basic x")], PUBLIC) == "BAD_AUTHORIZATION"
    assert await reason([("authorization", f"Bearer {other}")], PUBLIC) == "TOKEN_INVALID"
    assert await reason(bearer, PUBLIC) == "ok"
    assert await reason([], OPTIONAL) == "anonymous"
    assert await reason([("authorization", f"Bearer {other}")], OPTIONAL) == "TOKEN_INVALID"


def test_system_credentials_are_renewed_before_they_expire() -> None:
    signer = TokenSigner({"k1": KEY}, active_kid="k1", access_ttl_s=900)
    credentials = SystemCredentials(signer)
    first = credentials.authorization()
    assert credentials.authorization() == first
    credentials._renew_at = 0.0  # as if the renewal time had come
    assert credentials.authorization() != first


async def test_verified_tokens_are_cached_but_still_expire() -> None:
    signer = TokenSigner({"k1": KEY}, active_kid="k1", access_ttl_s=1, leeway_s=0)
    auth = Authenticator(signer, Marks(), Keys())
    token, _ = signer.issue(uuid.uuid4(), "user")
    first = await auth.authenticate(token)
    assert (await auth.authenticate(token)).claims is first.claims  # the second call took the cached claims
    await asyncio.sleep(1.1)
    assert await _refusal(auth, token) == "TOKEN_EXPIRED"
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert await _refusal(auth, tampered) == "TOKEN_INVALID"  # a different string is verified afresh
