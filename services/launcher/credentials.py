"""Credentials for scripts that drive a running mesh through Envoy (benchmarks, tests, smoke checks): sign in
as the first administrator with the password ``clipmind up`` wrote into the state dir, create users, and make
API keys for them. Plain HTTP/JSON over the public REST API, nothing a user could not do with curl.

    key = admin_api_key(endpoints.envoy_url, mesh.admin_password_path)
    alice = user_api_key(endpoints.envoy_url, key, "alice@example.com")
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ADMIN_EMAIL = "admin@localhost"


class CredentialError(RuntimeError):
    """The mesh refused a sign-in or an account change (the message has the HTTP status and the reason)."""


def _call(base_url: str, method: str, path: str, body: dict[str, Any] | None = None,
          bearer: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(f"{base_url}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    if bearer:
        request.add_header("authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return dict(json.loads(response.read() or b"{}"))
    except urllib.error.HTTPError as err:
        raise CredentialError(f"{method} {path}: HTTP {err.code} {err.read()[:300]!r}") from None


def sign_in(base_url: str, email: str, password: str) -> dict[str, Any]:
    """A session (``accessToken``, ``refreshToken``, ``user``) for ``email``."""
    return _call(base_url, "POST", "/v1/auth:login", {"email": email, "password": password})


def api_key(base_url: str, bearer: str, display_name: str) -> str:
    """A new API key of the caller of ``bearer``."""
    return str(_call(base_url, "POST", "/v1/users/me/apiKeys", {"displayName": display_name}, bearer)["key"])


def admin_api_key(base_url: str, admin_password_path: Path, display_name: str = "scripts") -> str:
    """An API key of the first administrator (signing in with the password in ``admin_password_path``)."""
    session = sign_in(base_url, ADMIN_EMAIL, admin_password_path.read_text().strip())
    return api_key(base_url, session["accessToken"], display_name)


def user_api_key(base_url: str, admin_bearer: str, email: str, *, role: str = "ROLE_USER") -> str:
    """Create the user ``email`` (a random password nobody needs: the key is the way in) and an API key of theirs."""
    password = secrets.token_urlsafe(24)
    _call(base_url, "POST", "/v1/users", {"user": {"email": email, "displayName": email.split("@")[0],
                                                   "role": role}, "password": password}, admin_bearer)
    return api_key(base_url, sign_in(base_url, email, password)["accessToken"], "scripts")
