"""Identity against real PostgreSQL: sign-in sessions, refresh rotation with reuse detection, logout, API keys,
the first administrator, who may create users, and what another user's objects look like (NOT_FOUND)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.common.auth import Authenticator
from services.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.common.principal import Principal
from services.common.rate_limit import RateLimiter
from services.common.revocations import Revocations
from services.common.tokens import TokenSigner
from services.identity.accounts import Accounts
from services.identity.server import LocalApiKeys
from services.identity.store import IdentityStore
from tests.db_setup import fresh_database, service_db

pytestmark = pytest.mark.integration

PASSWORD = "Correct-horse-9-battery"


class Parts:
    """Identity's domain on real PostgreSQL and Redis, and the authenticator every service runs in front of it."""

    def __init__(self, accounts: Accounts, store: IdentityStore, auth: Authenticator) -> None:
        self.accounts, self.store, self.auth = accounts, store, auth

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter((self.accounts, self.store))


@pytest.fixture
async def accounts(pg_dsn: str, redis_url: str) -> AsyncIterator[Parts]:
    pool = await service_db(pg_dsn, "identity")
    store = IdentityStore(pool)
    signer = TokenSigner({"k1": b"k" * 32}, active_kid="k1")
    revocations = Revocations.from_url(redis_url)
    domain = Accounts(store, signer, allow_signup=False, revoker=revocations)
    yield Parts(domain, store, Authenticator(signer, revocations, LocalApiKeys(domain), api_key_cache_s=60))
    await revocations.close()
    await pool.close()


def _email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


async def _admin(accounts: Accounts) -> Principal:
    """A fresh administrator (made as the first admin would be, by another admin)."""
    root = Principal(uuid.uuid4(), "admin")
    user = await accounts.create_user(root, email=_email(), password=PASSWORD, role="admin")
    return Principal(user.id, user.role)


async def test_login_refresh_rotates_and_a_reused_token_revokes_its_family(accounts) -> None:  # type: ignore[no-untyped-def]
    auth = accounts.auth
    accounts, _ = accounts
    admin = await _admin(accounts)
    email = _email()
    await accounts.create_user(admin, email=email, password=PASSWORD, display_name="Ann")
    with pytest.raises(Unauthenticated) as wrong:
        await accounts.login(email, PASSWORD + "x")
    with pytest.raises(Unauthenticated) as unknown:
        await accounts.login("nobody-" + email, PASSWORD)
    assert wrong.value.reason == unknown.value.reason == "INVALID_CREDENTIALS"  # the same answer either way

    first = await accounts.login(email.upper(), PASSWORD)  # emails compare case-insensitively
    assert (await auth.authenticate(first.access_token)).principal.user_id == first.user.id
    second = await accounts.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    with pytest.raises(Unauthenticated) as reused:  # the old one fails after use...
        await accounts.refresh(first.refresh_token)
    assert reused.value.reason == "REFRESH_TOKEN_REUSED"
    with pytest.raises(Unauthenticated) as revoked:  # ...and its reuse revoked the new one too
        await accounts.refresh(second.refresh_token)
    assert revoked.value.reason == "REFRESH_TOKEN_INVALID"
    other = await accounts.login(email, PASSWORD)  # another sign-in is another family: unaffected
    assert (await accounts.refresh(other.refresh_token)).user.id == first.user.id


async def test_logout_revokes_the_refresh_family_and_the_access_token(accounts) -> None:  # type: ignore[no-untyped-def]
    auth = accounts.auth
    accounts, _ = accounts
    admin = await _admin(accounts)
    email = _email()
    await accounts.create_user(admin, email=email, password=PASSWORD)
    session = await accounts.login(email, PASSWORD)
    claims = (await auth.authenticate(session.access_token)).claims
    await accounts.logout(session.refresh_token, claims)
    with pytest.raises(Unauthenticated) as err:
        await auth.authenticate(session.access_token)
    assert err.value.reason == "TOKEN_REVOKED"
    with pytest.raises(Unauthenticated):
        await accounts.refresh(session.refresh_token)


async def test_a_deleted_users_tokens_and_keys_are_refused(accounts) -> None:  # type: ignore[no-untyped-def]
    auth = accounts.auth
    accounts, _ = accounts
    admin = await _admin(accounts)
    email = _email()
    user = await accounts.create_user(admin, email=email, password=PASSWORD)
    session = await accounts.login(email, PASSWORD)
    _, key = await accounts.create_api_key(Principal(user.id, "user"), None, "ci")
    for credential in (session.access_token, key):  # both work, and the key's owner is now cached
        assert (await auth.authenticate(credential)).principal.user_id == user.id
    as_user = Principal(user.id, "user")
    with pytest.raises(PermissionDenied):  # only administrators delete users
        await accounts.delete_user(as_user, user.id)
    with pytest.raises(NotFound):  # ...and another user's account does not exist for a user
        await accounts.delete_user(as_user, admin.user_id)
    await accounts.delete_user(admin, user.id)
    for credential in (session.access_token, key):
        with pytest.raises(Unauthenticated) as err:
            await auth.authenticate(credential)
        assert err.value.reason in ("USER_REVOKED", "API_KEY_INVALID")
    with pytest.raises(Unauthenticated):
        await accounts.refresh(session.refresh_token)


async def test_api_keys_act_as_their_user_are_shown_once_and_revocable(accounts) -> None:  # type: ignore[no-untyped-def]
    auth = accounts.auth
    accounts, _ = accounts
    admin = await _admin(accounts)
    ann = await accounts.create_user(admin, email=_email(), password=PASSWORD)
    bob = await accounts.create_user(admin, email=_email(), password=PASSWORD)
    as_ann, as_bob = Principal(ann.id, "user"), Principal(bob.id, "user")
    record, key = await accounts.create_api_key(as_ann, None, "nightly import")
    assert key.startswith("cmk_") and record.key_prefix == key[:12] and key not in repr(record)
    assert (await auth.authenticate(key)).principal == as_ann
    listed = await accounts.list_api_keys(as_ann, ann.id, limit=10, after=None)
    assert [k.id for k in listed] == [record.id] and listed[0].last_use_time is not None

    # Bob sees nothing of Ann's keys: NOT_FOUND, never PERMISSION_DENIED.
    for call in (accounts.list_api_keys(as_bob, ann.id, limit=10, after=None),
                 accounts.create_api_key(as_bob, ann.id, "mine now"),
                 accounts.delete_api_key(as_bob, ann.id, record.id)):
        with pytest.raises(NotFound):
            await call
    with pytest.raises(NotFound):  # Bob's own key list has no such key either
        await accounts.delete_api_key(as_bob, bob.id, record.id)
    assert await accounts.list_api_keys(admin, ann.id, limit=10, after=None)  # an admin sees them

    await accounts.delete_api_key(as_ann, ann.id, record.id)
    with pytest.raises(Unauthenticated) as err:  # at once, though the key's owner is cached for a minute
        await auth.authenticate(key)
    assert err.value.reason == "API_KEY_INVALID"
    assert await accounts.list_api_keys(as_ann, None, limit=10, after=None) == []


async def test_who_may_create_users(accounts, pg_dsn: str) -> None:  # type: ignore[no-untyped-def]
    accounts, store = accounts
    admin = await _admin(accounts)
    user = await accounts.create_user(admin, email=_email(), password=PASSWORD)
    as_user = Principal(user.id, "user")
    with pytest.raises(Unauthenticated):  # nobody signed in, sign-up off
        await accounts.create_user(None, email=_email(), password=PASSWORD)
    with pytest.raises(PermissionDenied):  # a user is not an admin
        await accounts.create_user(as_user, email=_email(), password=PASSWORD)
    with pytest.raises(AlreadyExists):
        await accounts.create_user(admin, email=user.email.upper(), password=PASSWORD)
    with pytest.raises(InvalidArgument) as weak:
        await accounts.create_user(admin, email=_email(), password="short")
    assert weak.value.reason == "WEAK_PASSWORD"
    with pytest.raises(InvalidArgument):
        await accounts.create_user(admin, email="not-an-email", password=PASSWORD)

    open_signup = Accounts(store, TokenSigner({"k1": b"k" * 32}, active_kid="k1"), allow_signup=True)
    me = await open_signup.create_user(None, email=_email(), password=PASSWORD)
    assert me.role == "user"
    with pytest.raises(PermissionDenied):  # signing oneself up as an admin
        await open_signup.create_user(None, email=_email(), password=PASSWORD, role="admin")


async def test_the_first_admin_is_made_once_on_an_empty_directory(pg_dsn: str) -> None:
    async with fresh_database(pg_dsn) as dsn:
        pool = await service_db(dsn, "identity")
        try:
            store = IdentityStore(pool)
            accounts = Accounts(store, TokenSigner({"k1": b"k" * 32}, active_kid="k1"))
            made = await asyncio.gather(*(accounts.ensure_first_admin("admin@localhost", None) for _ in range(4)))
            passwords = [p for p in made if p is not None]
            assert len(passwords) == 1 and len(passwords[0]) >= 16  # one replica made it, with a generated one
            assert await store.count_users() == 1
            session = await accounts.login("admin@localhost", passwords[0])
            assert session.user.role == "admin"
            assert await accounts.ensure_first_admin("admin@localhost", None) is None  # never again
        finally:
            await pool.close()


async def test_sign_in_attempts_are_limited_per_account_and_address(pg_dsn: str, redis_url: str) -> None:
    pool = await service_db(pg_dsn, "identity")
    limiter = RateLimiter.from_url(redis_url)
    try:
        accounts = Accounts(IdentityStore(pool), TokenSigner({"k1": b"k" * 32}, active_kid="k1"),
                            limiter=limiter)
        admin = await _admin(accounts)
        email = _email()
        await accounts.create_user(admin, email=email, password=PASSWORD)
        address = f"203.0.113.{uuid.uuid4().int % 250}"
        for _ in range(9):
            with pytest.raises(Unauthenticated):
                await accounts.login(email, "Wrong-password-123", client=address)
        await accounts.login(email, PASSWORD, client=address)  # the 10th: right, and it resets the account's count
        for _ in range(10):
            with pytest.raises(Unauthenticated):
                await accounts.login(email.upper(), "Wrong-password-123", client=address)
        with pytest.raises(ResourceExhausted) as limited:  # the 11th, even with the right password
            await accounts.login(email, PASSWORD, client=address)
        assert limited.value.reason == "RATE_LIMITED" and (limited.value.retry_delay_s or 0) > 0
        other = _email()  # the same address may still try other accounts, up to its own limit (30)
        await accounts.create_user(admin, email=other, password=PASSWORD)
        for _ in range(9):
            await accounts.login(other, PASSWORD, client=address)
        with pytest.raises(ResourceExhausted) as by_address:
            await accounts.login(other, PASSWORD, client=address)
        assert "address" in by_address.value.message
    finally:
        await limiter.close()
        await pool.close()


async def test_revocations_are_published_again_after_redis_lost_them(accounts, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    auth = accounts.auth
    accounts, _ = accounts
    admin = await _admin(accounts)
    email = _email()
    await accounts.create_user(admin, email=email, password=PASSWORD)
    session = await accounts.login(email, PASSWORD)
    await accounts.logout(session.refresh_token, (await auth.authenticate(session.access_token)).claims)
    client = aioredis.from_url(redis_url)
    try:  # Redis restarted without its data: the sign-out is not seen...
        await client.delete(*[key async for key in client.scan_iter("clipmind:revoked:*")])
        assert (await auth.authenticate(session.access_token)).principal.user_id == session.user.id
    finally:
        await client.aclose()
    assert await accounts.republish_revocations() >= 1  # ...until identity's minute loop publishes it again
    with pytest.raises(Unauthenticated) as err:
        await auth.authenticate(session.access_token)
    assert err.value.reason == "TOKEN_REVOKED"


async def test_an_unreachable_redis_fails_revocation_checks_open_and_fast() -> None:
    revocations = Revocations.from_url("redis://127.0.0.1:9/0")  # the discard port: nothing listens
    try:
        started = asyncio.get_running_loop().time()
        verdicts = [await revocations.check(uuid.uuid4(), token_id="t") for _ in range(50)]
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await revocations.close()
    assert all(not v.revoked and v.user_revoked_at is None for v in verdicts)
    assert elapsed < 2.0, "the breaker should spare the calls after the first failure their timeout"
