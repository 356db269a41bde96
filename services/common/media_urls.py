"""Signed media URLs: ``/media/<key>?exp=<unix time>&kid=<key id>&sig=<HMAC>`` that expire.

A thumbnail or playback link in an API answer is a capability: whoever holds it may fetch that one blob until it
expires (15 minutes at most), without a bearer header (a browser's ``<video src>`` cannot send one). The media
server (``services.ingest.media_http``) refuses a URL without a signature, with a wrong one (any change to the
key or the expiry), or past its expiry, with 403; Range requests work as before, since the signature covers the
blob and the expiry, not the bytes asked for.

Why HMAC-SHA256 over ``key \\n expiry`` with keys derived from the JWT signing keys: every service already holds
``CLIPMIND_JWT_KEYS`` (so no new secret to distribute), a derived key (HMAC of the signing key and a fixed label)
is never the token key itself, and the ``kid`` lets a URL be verified while keys rotate, like tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Mapping

from services.common.tokens import TokenSigner

MAX_TTL_S = 900.0
_LABEL = b"clipmind media urls v1"


def _derive(key: bytes) -> bytes:
    return hmac.new(key, _LABEL, hashlib.sha256).digest()


class MediaSigner:
    def __init__(self, keys: Mapping[str, bytes], active_kid: str, *, ttl_s: float = MAX_TTL_S) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"media URL lifetime must be within (0, {MAX_TTL_S:g}] seconds")
        if active_kid not in keys:
            raise ValueError("media URL signer: the active key id is not among the keys")
        self._keys = {kid: _derive(key) for kid, key in keys.items()}
        self._active = active_kid
        self._ttl_s = ttl_s

    @classmethod
    def from_token_signer(cls, signer: TokenSigner, *, ttl_s: float = MAX_TTL_S) -> MediaSigner:
        return cls(signer.keys, signer.active_kid, ttl_s=ttl_s)

    def _mac(self, kid: str, key: str, expires: int) -> str:
        digest = hmac.new(self._keys[kid], f"{key}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def query(self, key: str, *, now: float | None = None) -> str:
        """The query string that makes ``/media/<key>`` fetchable until the lifetime has passed."""
        expires = math.ceil((time.time() if now is None else now) + self._ttl_s)
        return f"exp={expires}&kid={self._active}&sig={self._mac(self._active, key, expires)}"

    def verify(self, key: str, params: Mapping[str, str], *, now: float | None = None) -> str | None:
        """Why the URL of ``key`` with these query parameters is refused, or None when it is good."""
        expires_text, kid, sig = params.get("exp", ""), params.get("kid", ""), params.get("sig", "")
        if not (expires_text and kid and sig):
            return "unsigned"
        if kid not in self._keys or not expires_text.isdigit():
            return "invalid"
        expires = int(expires_text)
        if not hmac.compare_digest(self._mac(kid, key, expires), sig):
            return "invalid"
        if expires < (time.time() if now is None else now):
            return "expired"
        if expires > (time.time() if now is None else now) + MAX_TTL_S + 60:
            return "invalid"  # a key leak aside, never happens: signed URLs live 15 minutes at most
        return None
