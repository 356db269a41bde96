"""Identity's asyncpg repository (schema ``identity``, migrations beside this file): users, refresh-token families,
API keys and revoked access tokens. Tokens and keys are kept only as SHA-256 digests."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import asyncpg

from services.common.db import Database
from services.common.errors import AlreadyExists, NotFound
from services.common.names import api_key_name, user_name
from services.common.rows import newest_first, to_record
from services.identity.records import ApiKey, User

SCHEMA = "identity"
MIGRATIONS = Path(__file__).parent / "migrations"


def _user_not_found(user_id: uuid.UUID) -> NotFound:
    return NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND", metadata={"name": user_name(user_id)})


class IdentityStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    # -- users ---------------------------------------------------------------------------------

    async def count_users(self) -> int:
        return int(await self._pool.fetchval("SELECT count(*) FROM users"))

    async def create_user(self, user: User, *, only_if_none: bool = False) -> User | None:
        """Insert the user; ALREADY_EXISTS (``EMAIL_TAKEN``) when the email is in use. With ``only_if_none`` the
        user is inserted only into an empty table (the first admin; None when there are users already)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if only_if_none:
                    await conn.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
                    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
                        return None
                row = await conn.fetchrow(
                    "INSERT INTO users (id, email, display_name, role, password_hash) VALUES ($1, $2, $3, $4, $5) "
                    "RETURNING *", user.id, user.email, user.display_name, user.role, user.password_hash)
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("a user with this email exists", reason="EMAIL_TAKEN") from None
        return to_record(User, row)

    async def get_user(self, user_id: uuid.UUID) -> User:
        row = await self._pool.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        if row is None:
            raise _user_not_found(user_id)
        return to_record(User, row)

    async def find_user(self, email: str) -> User | None:
        row = await self._pool.fetchrow("SELECT * FROM users WHERE lower(email) = lower($1)", email)
        return None if row is None else to_record(User, row)

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        await self._pool.execute("UPDATE users SET password_hash = $2, update_time = now() WHERE id = $1",
                                 user_id, password_hash)

    async def delete_user(self, user_id: uuid.UUID, token_ttl_s: float) -> datetime:
        """Delete the user (refresh tokens and keys go with them) and remember, until their last access token
        (``token_ttl_s``) has expired, that tokens issued up to now are void; the time of the deletion."""
        async with self._pool.acquire() as conn, conn.transaction():
            if (await conn.execute("DELETE FROM users WHERE id = $1", user_id)).endswith(" 0"):
                raise _user_not_found(user_id)
            revoked: datetime = await conn.fetchval(
                "INSERT INTO revoked_users (user_id, revoke_time, expire_time) "
                "VALUES ($1, now(), now() + make_interval(secs => $2)) ON CONFLICT (user_id) DO UPDATE "
                "SET revoke_time = excluded.revoke_time, expire_time = excluded.expire_time RETURNING revoke_time",
                user_id, token_ttl_s)
            return revoked

    # -- refresh tokens ------------------------------------------------------------------------

    async def add_refresh_token(self, user_id: uuid.UUID, family_id: uuid.UUID, token_hash: bytes,
                                ttl_s: float) -> None:
        await self._pool.execute(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expire_time) "
            "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
            uuid.uuid4(), family_id, user_id, token_hash, ttl_s)

    async def rotate_refresh_token(
        self, token_hash: bytes, new_hash: bytes, ttl_s: float
    ) -> tuple[str, uuid.UUID | None]:
        """Use a refresh token once: ("ok", user id) with the family's next token stored under ``new_hash``;
        ("reused", None) when it was used before (its whole family is revoked now, committed);
        ("invalid", None) when it is unknown, expired or revoked."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, family_id, user_id, used_time, revoked_time, expire_time < now() AS expired "
                "FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE", token_hash)
            if row is None or row["revoked_time"] is not None or row["expired"]:
                return "invalid", None
            if row["used_time"] is not None:
                await conn.execute("UPDATE refresh_tokens SET revoked_time = now() WHERE family_id = $1 "
                                   "AND revoked_time IS NULL", row["family_id"])
                return "reused", None
            await conn.execute("UPDATE refresh_tokens SET used_time = now() WHERE id = $1", row["id"])
            await conn.execute(
                "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expire_time) "
                "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
                uuid.uuid4(), row["family_id"], row["user_id"], new_hash, ttl_s)
            return "ok", row["user_id"]

    async def revoke_refresh_family(self, token_hash: bytes) -> uuid.UUID | None:
        """Revoke the family of a refresh token (logout); its user, or None for an unknown token."""
        row = await self._pool.fetchrow(
            "UPDATE refresh_tokens SET revoked_time = coalesce(revoked_time, now()) WHERE family_id = "
            "(SELECT family_id FROM refresh_tokens WHERE token_hash = $1) RETURNING user_id", token_hash)
        return None if row is None else row["user_id"]

    # -- access tokens -------------------------------------------------------------------------

    async def revoke_access_token(self, jti: str, expire_time: datetime) -> None:
        await self._pool.execute(
            "INSERT INTO revoked_access_tokens (jti, expire_time) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
            jti, expire_time)

    async def live_revocations(self) -> tuple[list[tuple[str, datetime]], list[tuple[uuid.UUID, datetime]]]:
        """Revocations still in force: (access token id, its expiry) and (user id, time of revocation)."""
        tokens = await self._pool.fetch("SELECT jti, expire_time FROM revoked_access_tokens WHERE expire_time > now()")
        users = await self._pool.fetch("SELECT user_id, revoke_time FROM revoked_users WHERE expire_time > now()")
        return ([(r["jti"], r["expire_time"]) for r in tokens], [(r["user_id"], r["revoke_time"]) for r in users])

    async def purge_expired(self) -> int:
        """Drop refresh tokens and revocations past their expiry; how many rows."""
        a = await self._pool.execute("DELETE FROM refresh_tokens WHERE expire_time < now() - interval '1 day'")
        b = await self._pool.execute("DELETE FROM revoked_access_tokens WHERE expire_time < now()")
        c = await self._pool.execute("DELETE FROM revoked_users WHERE expire_time < now()")
        return sum(int(status.split()[-1]) for status in (a, b, c))

    # -- API keys ------------------------------------------------------------------------------

    async def add_api_key(self, key: ApiKey, key_hash: bytes) -> ApiKey:
        row = await self._pool.fetchrow(
            "INSERT INTO api_keys (id, user_id, display_name, key_prefix, key_hash) VALUES ($1, $2, $3, $4, $5) "
            "RETURNING *", key.id, key.user_id, key.display_name, key.key_prefix, key_hash)
        return to_record(ApiKey, row)

    async def list_api_keys(self, user_id: uuid.UUID, *, limit: int,
                            after: tuple[datetime, uuid.UUID] | None) -> list[ApiKey]:
        sql, args = newest_first("SELECT * FROM (SELECT * FROM api_keys WHERE revoked_time IS NULL) k",
                                 {"user_id": user_id}, after, limit)
        return [to_record(ApiKey, r) for r in await self._pool.fetch(sql, *args)]

    async def revoke_api_key(self, user_id: uuid.UUID, key_id: uuid.UUID) -> bytes:
        """Revoke the user's key; its digest. NOT_FOUND unless the user has that key, not yet revoked."""
        key_hash: bytes | None = await self._pool.fetchval(
            "UPDATE api_keys SET revoked_time = now() WHERE id = $1 AND user_id = $2 AND revoked_time IS NULL "
            "RETURNING key_hash", key_id, user_id)
        if key_hash is None:
            raise NotFound(f"API key {key_id} not found", reason="API_KEY_NOT_FOUND",
                           metadata={"name": api_key_name(user_id, key_id)})
        return bytes(key_hash)

    async def use_api_key(self, key_hash: bytes) -> User | None:
        """The user of a live API key (its last use recorded), None for an unknown or revoked key."""
        row = await self._pool.fetchrow(
            "UPDATE api_keys SET last_use_time = now() WHERE key_hash = $1 AND revoked_time IS NULL "
            "RETURNING user_id", key_hash)
        if row is None:
            return None
        found = await self._pool.fetchrow("SELECT * FROM users WHERE id = $1", row["user_id"])
        return None if found is None else to_record(User, found)
