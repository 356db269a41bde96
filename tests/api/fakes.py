"""In-memory implementations of storage and revocation Protocols, for tests/api. Each keeps the rules its
real adapter enforces in SQL (uniqueness, NOT_FOUND with the same reasons, newest-first paging), so the
domain behaves as it does on PostgreSQL; tests/integration checks the real adapters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.common.errors import AlreadyExists, NotFound
from services.common.rate_limit import Hits, Limit
from services.common.revocations import PREFIX, Verdict
from services.identity.records import ApiKey, User


def _now() -> datetime:
    return datetime.now(UTC)


class FakeAccountStore:
    """``services.identity.ports.AccountStore`` in memory."""

    def __init__(self) -> None:
        self.users: dict[uuid.UUID, User] = {}
        self.refresh: dict[bytes, dict] = {}
        self.revoked_tokens: dict[str, datetime] = {}
        self.revoked_users: dict[uuid.UUID, datetime] = {}
        self.keys: dict[bytes, tuple[ApiKey, bool]] = {}  # digest -> (key, revoked)

    async def count_users(self) -> int:
        return len(self.users)

    async def create_user(self, user: User, *, only_if_none: bool = False) -> User | None:
        if only_if_none and self.users:
            return None
        if any(u.email.lower() == user.email.lower() for u in self.users.values()):
            raise AlreadyExists("a user with this email exists", reason="EMAIL_TAKEN")
        made = replace(user, create_time=_now())
        self.users[user.id] = made
        return made

    async def get_user(self, user_id: uuid.UUID) -> User:
        if user_id not in self.users:
            raise NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND", metadata={"name": f"users/{user_id}"})
        return self.users[user_id]

    async def find_user(self, email: str) -> User | None:
        return next((u for u in self.users.values() if u.email.lower() == email.lower()), None)

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        self.users[user_id] = replace(self.users[user_id], password_hash=password_hash)

    async def delete_user(self, user_id: uuid.UUID, token_ttl_s: float) -> datetime:
        await self.get_user(user_id)
        del self.users[user_id]
        self.keys = {d: k for d, k in self.keys.items() if k[0].user_id != user_id}
        self.refresh = {d: r for d, r in self.refresh.items() if r["user"] != user_id}
        self.revoked_users[user_id] = _now()
        return self.revoked_users[user_id]

    async def add_refresh_token(self, user_id: uuid.UUID, family_id: uuid.UUID, token_hash: bytes,
                                ttl_s: float) -> None:
        self.refresh[token_hash] = {"user": user_id, "family": family_id, "used": False, "revoked": False,
                                    "expires": _now() + timedelta(seconds=ttl_s)}

    async def rotate_refresh_token(self, token_hash: bytes, new_hash: bytes,
                                   ttl_s: float) -> tuple[str, uuid.UUID | None]:
        row = self.refresh.get(token_hash)
        if row is None or row["revoked"] or row["expires"] < _now():
            return "invalid", None
        if row["used"]:
            for other in self.refresh.values():
                if other["family"] == row["family"]:
                    other["revoked"] = True
            return "reused", None
        row["used"] = True
        await self.add_refresh_token(row["user"], row["family"], new_hash, ttl_s)
        return "ok", row["user"]

    async def revoke_refresh_family(self, token_hash: bytes) -> uuid.UUID | None:
        row = self.refresh.get(token_hash)
        if row is None:
            return None
        for other in self.refresh.values():
            if other["family"] == row["family"]:
                other["revoked"] = True
        return uuid.UUID(str(row["user"]))

    async def revoke_access_token(self, jti: str, expire_time: datetime) -> None:
        self.revoked_tokens[jti] = expire_time

    async def live_revocations(self) -> tuple[list[tuple[str, datetime]], list[tuple[uuid.UUID, datetime]]]:
        return list(self.revoked_tokens.items()), list(self.revoked_users.items())

    async def add_api_key(self, key: ApiKey, key_hash: bytes) -> ApiKey:
        made = replace(key, create_time=_now())
        self.keys[key_hash] = (made, False)
        return made

    async def list_api_keys(self, user_id: uuid.UUID, *, limit: int,
                            after: tuple[datetime, uuid.UUID] | None) -> list[ApiKey]:
        live = sorted((k for k, revoked in self.keys.values() if k.user_id == user_id and not revoked),
                      key=lambda k: (k.create_time, k.id), reverse=True)
        if after is not None:
            live = [k for k in live if (k.create_time, k.id) < after]
        return live[:limit]

    async def revoke_api_key(self, user_id: uuid.UUID, key_id: uuid.UUID) -> bytes:
        for digest, (key, revoked) in self.keys.items():
            if key.id == key_id and key.user_id == user_id and not revoked:
                self.keys[digest] = (key, True)
                return digest
        raise NotFound(f"API key {key_id} not found", reason="API_KEY_NOT_FOUND",
                       metadata={"name": f"users/{user_id}/apiKeys/{key_id}"})

    async def use_api_key(self, key_hash: bytes) -> User | None:
        found = self.keys.get(key_hash)
        if found is None or found[1]:
            return None
        self.keys[key_hash] = (replace(found[0], last_use_time=_now()), False)
        return self.users.get(found[0].user_id)


class FakeRevocations:
    """The Redis revocation marks (``services.common.revocations.Revocations``) in memory: reader and writer."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.keys: set[str] = set()
        self.users: dict[uuid.UUID, float] = {}

    async def check(self, user_id: uuid.UUID, *, token_id: str | None = None,
                    api_key_digest: str | None = None) -> Verdict:
        revoked = token_id in self.tokens if token_id is not None else api_key_digest in self.keys
        return Verdict(revoked=revoked, user_revoked_at=self.users.get(user_id))

    async def revoke_token(self, jti: str, expires_at: datetime) -> None:
        self.tokens.add(jti)

    async def revoke_api_key(self, digest_hex: str) -> None:
        self.keys.add(digest_hex)

    async def revoke_user(self, user_id: uuid.UUID, at: float | None = None) -> None:
        self.users[user_id] = time.time() if at is None else at

    def value(self, key: str) -> bytes | None:
        """The value Redis would hold under a mark's key (``revocations.marks_of``), None for none."""
        kind, _, name = key.removeprefix(PREFIX).partition(":")
        if kind == "token":
            return b"1" if name in self.tokens else None
        if kind == "key":
            return b"1" if name in self.keys else None
        at = self.users.get(uuid.UUID(name)) if kind == "user" else None
        return None if at is None else repr(at).encode()


class FakeWindows:
    """Sliding windows (``RateLimiter.hit_all``) in memory, on the test's clock; the keys it is asked to read are
    the revocation marks of ``marks`` (as the real script reads them in the same call)."""

    def __init__(self, marks: FakeRevocations | None = None) -> None:
        self.hits: dict[str, list[float]] = {}
        self._marks = marks or FakeRevocations()

    async def hit_all(self, limits: list[tuple[Limit, str]], *, read: Sequence[str] = ()) -> Hits:
        found = tuple(self._marks.value(key) for key in read)
        now = time.monotonic()
        for limit, subject in limits:
            key = f"{limit.name}:{subject}"
            window = [t for t in self.hits.get(key, []) if t > now - limit.window_s]
            self.hits[key] = window
            if len(window) >= limit.limit:
                return Hits(window[0] + limit.window_s - now, limit, found)
        for limit, subject in limits:
            self.hits[f"{limit.name}:{subject}"].append(now)
        return Hits(read=found)
