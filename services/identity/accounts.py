"""Identity's domain: users, sign-in sessions (a short access token and a rotating refresh token), API keys,
and turning a bearer credential into a ``Principal``.

- **Passwords** are argon2id hashes (``passwords``), held to a minimum strength; a wrong email and a wrong
  password take the same time and give the same answer.
- **Access tokens** are HS256 JWTs (``tokens``), 15 minutes by default; a logout revokes the one it was sent
  with (its ``jti`` is remembered until it expires).
- **Refresh tokens** are opaque 256-bit values, 7 days by default, and rotate on every use; presenting a used
  one again means it was copied, so its whole family (every token descended from the same sign-in) is revoked.
- **API keys** (``cmk_…``) act as their user, for scripts and CI; only their digest is stored and the key is
  shown once.
- Another user's key is NOT_FOUND, never PERMISSION_DENIED, so its existence does not leak.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.auth import API_KEY_PREFIX
from services.common.errors import FailedPrecondition, NotFound, PermissionDenied, Unauthenticated, invalid_field
from services.common.names import user_name
from services.common.principal import Principal
from services.common.rate_limit import Limit
from services.common.tokens import Claims, TokenSigner
from services.identity import passwords
from services.identity.ports import AccountStore, Limiter, Revoker
from services.identity.records import ROLES, ApiKey, User

log = logging.getLogger(__name__)

REFRESH_TTL_S = 7 * 24 * 3600.0
REFRESH_PREFIX = "rt_"
MAX_EMAIL_CHARS = 254
MAX_DISPLAY_NAME_CHARS = 200
# Sign-in attempts against guessing: per account (reset by a successful sign-in) and per client address.
LOGIN_PER_ACCOUNT = Limit("login-account", 10, 15 * 60)
LOGIN_PER_ADDRESS = Limit("login-address", 30, 15 * 60)
# Verified when the email is unknown, so a wrong email costs what a wrong password does.
_DUMMY_HASH = passwords.hash_password(secrets.token_urlsafe(24))


def digest(secret: str) -> bytes:
    """What is stored of a refresh token or an API key: they are 256-bit random values, so SHA-256 suffices."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class Session:
    """What a sign-in or a refresh hands back."""

    access_token: str
    claims: Claims
    refresh_token: str
    user: User


def _bad_credentials() -> Unauthenticated:
    return Unauthenticated("wrong email or password", reason="INVALID_CREDENTIALS")


def check_email(email: str, field: str = "user.email") -> str:
    email = email.strip()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or len(email) > MAX_EMAIL_CHARS or any(c.isspace() for c in email):
        raise invalid_field(field, "not an email address")
    return email


class Accounts:
    def __init__(self, store: AccountStore, signer: TokenSigner, *, refresh_ttl_s: float = REFRESH_TTL_S,
                 allow_signup: bool = False, limiter: Limiter | None = None, revoker: Revoker | None = None,
                 access_ttl_s: float = 900.0) -> None:
        self._store = store
        self._limiter = limiter
        self._revoker = revoker
        self._access_ttl_s = access_ttl_s
        self._signer = signer
        self._refresh_ttl_s = refresh_ttl_s
        self._allow_signup = allow_signup

    # -- sessions ------------------------------------------------------------------------------

    async def login(self, email: str, password: str, *, client: str = "") -> Session:
        """A session for the right email and password. Attempts are limited per account and per ``client``
        address (RESOURCE_EXHAUSTED ``RATE_LIMITED`` with a retry delay), so passwords cannot be guessed fast."""
        if not email or not password:
            raise invalid_field("email" if not email else "password", "required", reason="REQUIRED_FIELD")
        account = email.strip().lower()
        if self._limiter is not None:
            if client:
                await self._limiter.check(LOGIN_PER_ADDRESS, client, what="sign-in attempts from this address")
            await self._limiter.check(LOGIN_PER_ACCOUNT, account, what="sign-in attempts for this account")
        user = await self._store.find_user(email.strip())
        ok = await passwords.verify_password_async(user.password_hash if user else _DUMMY_HASH, password)
        if user is None or not ok:
            raise _bad_credentials()
        if self._limiter is not None:
            await self._limiter.reset(LOGIN_PER_ACCOUNT, account)
        if passwords.needs_rehash(user.password_hash):
            await self._store.set_password_hash(user.id, await passwords.hash_password_async(password))
        return await self._start_session(user, uuid.uuid4())

    async def refresh(self, refresh_token: str) -> Session:
        new = REFRESH_PREFIX + secrets.token_urlsafe(32)
        outcome, user_id = await self._store.rotate_refresh_token(digest(refresh_token), digest(new),
                                                                  self._refresh_ttl_s)
        if outcome == "reused":
            log.warning("a used refresh token was presented again: its sign-in is revoked")
            raise Unauthenticated("this refresh token was used already; sign in again", reason="REFRESH_TOKEN_REUSED")
        if outcome != "ok" or user_id is None:
            raise Unauthenticated("refresh token unknown, expired or revoked; sign in again",
                                  reason="REFRESH_TOKEN_INVALID")
        try:
            user = await self._store.get_user(user_id)
        except NotFound:
            raise Unauthenticated("the user no longer exists", reason="USER_DELETED") from None
        access, claims = self._signer.issue(user.id, user.role)
        return Session(access, claims, new, user)

    async def logout(self, refresh_token: str, access: Claims | None = None) -> None:
        """Revoke the refresh token's family, and the access token the call came with (when there was one): in
        identity's tables, and published so that every service refuses the access token at once."""
        await self._store.revoke_refresh_family(digest(refresh_token))
        if access is not None:
            await self._store.revoke_access_token(access.jti, access.expires_at)
            await self._publish("an access token's sign-out", lambda r: r.revoke_token(access.jti, access.expires_at))

    async def _publish(self, what: str, action: Any) -> None:
        """Publish a revocation; when Redis is away it is only late: ``republish_revocations`` sends it again."""
        if self._revoker is None:
            return
        try:
            await action(self._revoker)
        except Exception as exc:  # Redis unreachable: the durable record is in our tables
            log.warning("could not publish %s now (%s); it is published again within a minute", what,
                        type(exc).__name__)

    async def republish_revocations(self) -> int:
        """Publish every revocation still in force again (after Redis lost them, say); how many."""
        if self._revoker is None:
            return 0
        tokens, users = await self._store.live_revocations()
        for jti, expires in tokens:
            await self._revoker.revoke_token(jti, expires)
        for user_id, at in users:
            await self._revoker.revoke_user(user_id, at.timestamp())
        return len(tokens) + len(users)

    async def _start_session(self, user: User, family: uuid.UUID) -> Session:
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        await self._store.add_refresh_token(user.id, family, digest(refresh), self._refresh_ttl_s)
        access, claims = self._signer.issue(user.id, user.role)
        return Session(access, claims, refresh, user)

    # -- credentials → principal ---------------------------------------------------------------

    async def resolve_api_key(self, key: str) -> Principal | None:
        """The user an API key acts as (its use recorded), None when it is unknown or revoked or the user gone."""
        if not key.startswith(API_KEY_PREFIX):
            return None
        user = await self._store.use_api_key(digest(key))
        return None if user is None else Principal(user.id, user.role)

    # -- users ---------------------------------------------------------------------------------

    async def create_user(self, caller: Principal | None, *, email: str, password: str, display_name: str = "",
                          role: str = "user") -> User:
        """Admins create users of any role; anyone else only when self sign-up is on, and only as a user."""
        if caller is None or not caller.is_admin:
            if not self._allow_signup:
                if caller is None:
                    raise Unauthenticated("sign in as an administrator to create users", reason="SIGN_IN_REQUIRED")
                raise PermissionDenied("only administrators create users", reason="ADMIN_REQUIRED")
            if role != "user":
                raise PermissionDenied("only administrators set roles", reason="ADMIN_REQUIRED")
        if role not in ROLES:
            raise invalid_field("user.role", "user or admin")
        email = check_email(email)
        if len(display_name) > MAX_DISPLAY_NAME_CHARS or any(ord(c) < 32 for c in display_name):
            raise invalid_field("user.display_name", f"at most {MAX_DISPLAY_NAME_CHARS} printable characters")
        passwords.check_strength(password, email=email)
        user = User(uuid.uuid4(), email, role, display_name, await passwords.hash_password_async(password))
        created = await self._store.create_user(user)
        assert created is not None
        return created

    async def delete_user(self, caller: Principal, user_id: uuid.UUID) -> None:
        """Administrators delete other users; the user's tokens and API keys are refused at once everywhere.
        Another user's account is NOT_FOUND to a non-administrator, so existence does not leak."""
        if not caller.is_admin:
            if user_id != caller.user_id:
                raise NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND",
                               metadata={"name": user_name(user_id)})
            raise PermissionDenied("ask an administrator to delete your account", reason="ADMIN_REQUIRED")
        if user_id == caller.user_id:
            raise FailedPrecondition("administrators cannot delete their own account", reason="SELF_DELETE")
        at = await self._store.delete_user(user_id, self._access_ttl_s + 60)
        log.info("deleted user %s", user_id)
        await self._publish("a user's deletion", lambda r: r.revoke_user(user_id, at.timestamp()))

    async def current_user(self, caller: Principal) -> User:
        try:
            return await self._store.get_user(caller.user_id)
        except NotFound:
            raise Unauthenticated("the user no longer exists", reason="USER_DELETED") from None

    async def ensure_first_admin(self, email: str, password: str | None) -> str | None:
        """On an empty directory, create the first administrator: with ``password``, or a generated one that is
        returned (for the caller to hand over privately; it is never logged). None when users exist."""
        generated = None
        if not password:
            generated = password = secrets.token_urlsafe(18)
        passwords.check_strength(password, email=email, field="CLIPMIND_ADMIN_PASSWORD")
        admin = User(uuid.uuid4(), check_email(email, "CLIPMIND_ADMIN_EMAIL"), "admin", "Administrator",
                     await passwords.hash_password_async(password))
        if await self._store.create_user(admin, only_if_none=True) is None:
            return None
        log.info("created the first administrator, %s", admin.email)
        return generated or ""

    # -- API keys ------------------------------------------------------------------------------

    def _owner(self, caller: Principal, user_id: uuid.UUID | None) -> uuid.UUID:
        """The user whose keys a call is about: ``None`` (``users/me``) is the caller; another user's is
        NOT_FOUND unless the caller is an admin."""
        if user_id is None or user_id == caller.user_id:
            return caller.user_id
        if caller.is_admin:
            return user_id
        raise NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND", metadata={"name": user_name(user_id)})

    async def create_api_key(self, caller: Principal, user_id: uuid.UUID | None,
                             display_name: str) -> tuple[ApiKey, str]:
        owner = self._owner(caller, user_id)
        if caller.user_id != owner:
            await self._store.get_user(owner)  # NOT_FOUND for a user that does not exist
        if len(display_name) > MAX_DISPLAY_NAME_CHARS or any(ord(c) < 32 for c in display_name):
            raise invalid_field("api_key.display_name", f"at most {MAX_DISPLAY_NAME_CHARS} printable characters")
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(uuid.uuid4(), owner, secret[:12], display_name)
        return await self._store.add_api_key(key, digest(secret)), secret

    async def list_api_keys(self, caller: Principal, user_id: uuid.UUID | None, *, limit: int,
                            after: tuple[datetime, uuid.UUID] | None) -> list[ApiKey]:
        return await self._store.list_api_keys(self._owner(caller, user_id), limit=limit, after=after)

    async def delete_api_key(self, caller: Principal, user_id: uuid.UUID, key_id: uuid.UUID) -> None:
        key_hash = await self._store.revoke_api_key(self._owner(caller, user_id), key_id)
        await self._publish("an API key's revocation", lambda r: r.revoke_api_key(key_hash.hex()))

