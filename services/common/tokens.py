"""JWT access tokens: HS256 only, keys named by ``kid`` so they can be rotated.

Why these choices:

* **One pinned algorithm.** ``verify`` passes ``algorithms=["HS256"]`` to PyJWT and never looks at the
  token's ``alg`` to decide anything, so ``alg: none``, HS384/HS512 and the RS256→HS256 confusion attack
  (an RSA public key used as an HMAC secret) are all refused (RFC 8725 §2.1, §3.1). Every service in the
  mesh that verifies tokens is ours and can share a secret, so a symmetric algorithm is enough and needs
  no ``cryptography`` dependency.
* **Keys named by ``kid``, rotated without downtime.** ``TokenSigner`` holds several keys; it signs with
  the active one and puts its id in the header. ``verify`` reads the *unverified* header only to pick the
  key by ``kid`` from its own configured set (an unknown or missing ``kid`` is refused; the header never
  supplies key material). To rotate: add the new key as active and keep the old one configured until the
  last token it signed has expired (``access_ttl_s``), then drop it.
* **Keys of at least 32 bytes.** RFC 7518 §3.2 requires an HS256 key at least as long as the hash output
  (256 bits). A shorter key is a startup error (``ValueError`` naming the kid), never a warning.
* **Time from an injectable clock.** PyJWT checks ``exp``/``nbf``/``iat`` against the wall clock and
  cannot be given another one, so those three are checked here (with ``leeway_s``) against ``now``;
  PyJWT still checks the signature, the presence of every required claim, ``iss`` and ``aud``.

Every refusal is ``Unauthenticated`` with reason ``TOKEN_EXPIRED`` (``exp`` passed) or ``TOKEN_INVALID``
(anything else), and a message that never contains the token or any part of it.

Key setting format (``load_keys``): comma-separated ``kid:secret`` entries, the first one active::

    CLIPMIND_JWT_KEYS="k2:<base64url secret>,k1:<base64url secret>"

``kid`` is 1–64 characters of ``A-Z a-z 0-9 . _ -``; the secret is base64url (RFC 4648 §5, padding
optional) of at least 32 bytes. Make one with ``format_key("k3", generate_key())``.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from services.common.errors import Unauthenticated

ALGORITHM = "HS256"
MIN_KEY_BYTES = 32  # RFC 7518 §3.2: an HS256 key is at least as long as the SHA-256 output
GENERATED_KEY_BYTES = 64  # the HMAC-SHA256 block size: the most a key can usefully hold
ROLES = ("user", "admin", "system")
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
MAX_TOKEN_CHARS = 8192  # far above any token we issue; refuse bigger input before parsing it

REASON_EXPIRED = "TOKEN_EXPIRED"
REASON_INVALID = "TOKEN_INVALID"

_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


@dataclass(frozen=True)
class Claims:
    """What a verified access token says: who (``user_id``, ``role``), which token, when, and its key."""

    user_id: uuid.UUID
    role: str
    jti: str
    issued_at: datetime
    expires_at: datetime
    key_id: str


class TokenSigner:
    """Issues and verifies HS256 access tokens with a set of named keys, signing with ``active_kid``."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        *,
        active_kid: str,
        issuer: str = "clipmind",
        audience: str = "clipmind-api",
        access_ttl_s: float = 900,
        leeway_s: float = 5,
    ) -> None:
        if not keys:
            raise ValueError("token signer: at least one signing key is required")
        for kid, key in keys.items():
            _check_key(kid, key)
        if active_kid not in keys:
            raise ValueError(f"token signer: active key id {active_kid!r} is not among the configured keys")
        if not (math.isfinite(access_ttl_s) and access_ttl_s > 0):
            raise ValueError("token signer: access_ttl_s must be a positive number of seconds")
        if not (math.isfinite(leeway_s) and leeway_s >= 0):
            raise ValueError("token signer: leeway_s must be zero or a positive number of seconds")
        self._keys = {kid: bytes(key) for kid, key in keys.items()}
        self._active_kid = active_kid
        self._issuer = issuer
        self._audience = audience
        self._ttl_s = access_ttl_s
        self._leeway_s = leeway_s

    @property
    def active_kid(self) -> str:
        return self._active_kid

    @property
    def keys(self) -> dict[str, bytes]:
        """The configured keys by id (for keys derived from them, such as media URL signing)."""
        return dict(self._keys)

    def issue(self, user_id: uuid.UUID, role: str, *, now: datetime | None = None) -> tuple[str, Claims]:
        """A signed access token for ``user_id`` acting as ``role``, and the claims it carries."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        issued = int(_utc(now).timestamp())
        expires = issued + math.ceil(self._ttl_s)
        jti = uuid.uuid4().hex
        payload = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "role": role,
            "jti": jti,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
        }
        token = jwt.encode(
            payload, self._keys[self._active_kid], algorithm=ALGORITHM, headers={"kid": self._active_kid}
        )
        claims = Claims(
            user_id=user_id,
            role=role,
            jti=jti,
            issued_at=datetime.fromtimestamp(issued, UTC),
            expires_at=datetime.fromtimestamp(expires, UTC),
            key_id=self._active_kid,
        )
        return token, claims

    def verify(self, token: str, *, now: datetime | None = None) -> Claims:
        """The claims of a valid token; anything else raises ``Unauthenticated`` (never naming the token)."""
        current = _utc(now).timestamp()
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise _invalid("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed token") from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _invalid("token names no signing key")
        key = self._keys.get(kid)
        if key is None:
            raise _invalid("token names an unknown signing key")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],  # pinned: the token's own "alg" never chooses
                issuer=self._issuer,
                audience=self._audience,
                options={
                    "require": REQUIRED_CLAIMS,
                    "strict_aud": True,
                    # checked below against `now`, with the leeway: PyJWT only knows the wall clock
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise _invalid(_describe(exc)) from None
        return self._claims(payload, kid, current)

    def _claims(self, payload: dict[str, Any], kid: str, now: float) -> Claims:
        issued = _numeric_date(payload, "iat")
        not_before = _numeric_date(payload, "nbf")
        expires = _numeric_date(payload, "exp")
        if expires <= now - self._leeway_s:
            raise Unauthenticated(message="access token has expired", reason=REASON_EXPIRED)
        if not_before > now + self._leeway_s:
            raise _invalid("token is not valid yet (nbf)")
        if issued > now + self._leeway_s:
            raise _invalid("token was issued in the future (iat)")
        role = payload.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _invalid("token carries no allowed role")
        user_id = _canonical_uuid(payload["sub"])
        if user_id is None:
            raise _invalid("token subject is not a user id")
        jti = payload["jti"]
        if not isinstance(jti, str) or not jti:
            raise _invalid("token has no id (jti)")
        return Claims(
            user_id=user_id,
            role=role,
            jti=jti,
            issued_at=datetime.fromtimestamp(issued, UTC),
            expires_at=datetime.fromtimestamp(expires, UTC),
            key_id=kid,
        )


def load_keys(spec: str) -> tuple[dict[str, bytes], str]:
    """Parse ``"k2:<base64url>,k1:<base64url>"`` into ``({kid: key}, active_kid)``; the first entry is active.

    Raises ``ValueError`` (naming the kid, never the secret) for an empty setting, an entry without
    ``kid:``, a bad or repeated kid, a secret that is not base64url, or one shorter than 32 bytes.
    """
    if not spec.strip():
        raise ValueError("signing keys: the setting is empty")
    keys: dict[str, bytes] = {}
    for position, raw in enumerate(spec.split(","), start=1):
        entry = raw.strip()
        if not entry:
            raise ValueError(f"signing keys: entry {position} is empty")
        kid, sep, secret = entry.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not sep:
            raise ValueError(f"signing keys: entry {position} is not of the form kid:base64url-secret")
        if not _KID.fullmatch(kid):
            raise ValueError(f"signing keys: entry {position} has an invalid key id (1-64 of A-Z a-z 0-9 . _ -)")
        if kid in keys:
            raise ValueError(f"signing keys: key id {kid!r} appears twice")
        key = _decode_base64url(kid, secret)
        _check_key(kid, key)
        keys[kid] = key
    return keys, next(iter(keys))  # dicts keep insertion order: the first entry


def generate_key() -> bytes:
    """A new random signing key (64 bytes: the HMAC-SHA256 block size, twice the RFC 7518 minimum)."""
    return secrets.token_bytes(GENERATED_KEY_BYTES)


def format_key(kid: str, key: bytes) -> str:
    """One ``kid:base64url`` entry of the ``load_keys`` setting (unpadded base64url)."""
    if not _KID.fullmatch(kid):
        raise ValueError("invalid key id (1-64 of A-Z a-z 0-9 . _ -)")
    _check_key(kid, key)
    return f"{kid}:{base64.urlsafe_b64encode(key).rstrip(b'=').decode('ascii')}"


def _check_key(kid: str, key: bytes) -> None:
    if not isinstance(kid, str) or not kid:
        raise ValueError("signing keys: every key needs a non-empty string key id")
    if not isinstance(key, bytes | bytearray):
        raise ValueError(f"signing key {kid!r} must be bytes")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"signing key {kid!r} is {len(key)} bytes; HS256 needs at least {MIN_KEY_BYTES} (RFC 7518 §3.2)"
        )
    try:  # PyJWT refuses PEM/SSH/DER/JWK-shaped HMAC secrets; find out at startup, not at the first request
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(bytes(key))
    except jwt.PyJWTError:
        raise ValueError(f"signing key {kid!r} looks like an asymmetric key or JWK, not a random secret") from None


def _decode_base64url(kid: str, secret: str) -> bytes:
    if not _BASE64URL.fullmatch(secret):
        raise ValueError(f"signing key {kid!r} is not base64url")
    try:
        return base64.urlsafe_b64decode(secret.rstrip("=") + "=" * (-len(secret.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"signing key {kid!r} is not base64url") from None


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _numeric_date(payload: dict[str, Any], claim: str) -> float:
    value = payload[claim]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"token claim {claim} is not a NumericDate")
    try:
        datetime.fromtimestamp(value, UTC)  # rejects dates outside what the claims can hold
    except (OverflowError, OSError, ValueError):
        raise _invalid(f"token claim {claim} is out of range") from None
    return float(value)


def _canonical_uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed if str(parsed) == value else None  # only the form we issue: no braces, urn: or bare hex


def _describe(exc: jwt.PyJWTError) -> str:
    # Fixed words per failure, never PyJWT's message: that one could quote parts of the input.
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm is not allowed"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature does not verify"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim" if exc.claim in REQUIRED_CLAIMS else "token lacks a claim"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token has the wrong issuer"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token has the wrong audience"
    if isinstance(exc, InvalidSubjectError | InvalidJTIError):
        return "token subject or id is malformed"
    return "malformed token"


def _invalid(detail: str) -> Unauthenticated:
    return Unauthenticated(message=f"access token refused: {detail}", reason=REASON_INVALID)


__all__ = [
    "ALGORITHM",
    "MIN_KEY_BYTES",
    "ROLES",
    "Claims",
    "TokenSigner",
    "format_key",
    "generate_key",
    "load_keys",
]
