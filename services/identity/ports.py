"""What the identity domain (``accounts``) needs from its storage, its rate limits and the revocation list, as
Protocols beside it; the adapters are ``store.IdentityStore`` (PostgreSQL), ``services.common.rate_limit.RateLimiter``
and ``services.common.revocations.Revocations`` (Redis)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from services.common.rate_limit import Limit
from services.identity.records import ApiKey, User


class Limiter(Protocol):
    async def check(self, limit: Limit, subject: str, *, what: str) -> None:
        """Count one hit; RESOURCE_EXHAUSTED (``RATE_LIMITED``) when over ``limit``."""

    async def reset(self, limit: Limit, subject: str) -> None: ...


class Revoker(Protocol):
    """Where revocations are published for every service to see (``services.common.revocations``)."""

    async def revoke_token(self, jti: str, expires_at: datetime) -> None: ...

    async def revoke_api_key(self, digest_hex: str) -> None: ...

    async def revoke_user(self, user_id: uuid.UUID, at: float | None = None) -> None: ...


class AccountStore(Protocol):
    async def count_users(self) -> int: ...

    async def create_user(self, user: User, *, only_if_none: bool = False) -> User | None:
        """ALREADY_EXISTS (``EMAIL_TAKEN``) when the email is in use; ``only_if_none``: None unless the first."""

    async def get_user(self, user_id: uuid.UUID) -> User:
        """NOT_FOUND (``USER_NOT_FOUND``)."""

    async def find_user(self, email: str) -> User | None: ...

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None: ...

    async def add_refresh_token(self, user_id: uuid.UUID, family_id: uuid.UUID, token_hash: bytes,
                                ttl_s: float) -> None: ...

    async def rotate_refresh_token(
        self, token_hash: bytes, new_hash: bytes, ttl_s: float
    ) -> tuple[str, uuid.UUID | None]:
        """("ok", user id), ("reused", None) (the family revoked) or ("invalid", None)."""

    async def revoke_refresh_family(self, token_hash: bytes) -> uuid.UUID | None: ...

    async def delete_user(self, user_id: uuid.UUID, token_ttl_s: float) -> datetime:
        """NOT_FOUND (``USER_NOT_FOUND``); the time of the deletion, remembered until ``token_ttl_s`` passed."""

    async def revoke_access_token(self, jti: str, expire_time: datetime) -> None: ...

    async def live_revocations(self) -> tuple[list[tuple[str, datetime]], list[tuple[uuid.UUID, datetime]]]: ...

    async def add_api_key(self, key: ApiKey, key_hash: bytes) -> ApiKey: ...

    async def list_api_keys(self, user_id: uuid.UUID, *, limit: int,
                            after: tuple[datetime, uuid.UUID] | None) -> list[ApiKey]: ...

    async def revoke_api_key(self, user_id: uuid.UUID, key_id: uuid.UUID) -> bytes:
        """The revoked key's digest; NOT_FOUND (``API_KEY_NOT_FOUND``)."""

    async def use_api_key(self, key_hash: bytes) -> User | None: ...
