"""JWT access tokens: the attack table (each forged or broken token is refused), rotation, key loading.

Tokens are crafted by hand where PyJWT would refuse to make them (``alg: none``, HMAC over a PEM), and
every check runs at a fixed ``now``: nothing sleeps and nothing reads the wall clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from services.common.errors import Unauthenticated
from services.common.tokens import Claims, TokenSigner, format_key, generate_key, load_keys

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
T0 = int(NOW.timestamp())
KEY_NEW = bytes(range(64))
KEY_OLD = b"o" * 32
USER = uuid.UUID("5b0d3c8e-8f43-4b8e-9a43-0f4c1f2a9d11")

# A real 2048-bit RSA public key (only its bytes matter): the algorithm-confusion attack signs HS256 with it.
RSA_PUBLIC_PEM = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqUOyzw/wtnzDuxr40K3E
uYkVlE3QwjE5dAVnKUXN9R63wqHECvZZLG5NS6hgpxgW5HBZDYgkRerLsDMSHEmY
U0A4Jnk8g23P9xRfA0lqa3qVhpfo6oyyQgRAPIqxn87zgm+c7LPSWCIcfyJgZeZ2
Kvnt6VMpZYn9QIoWM8JlrkcO1NfqENY8pJ0wFJMD08VMqsyZlmz8eChiO/9suQsT
ION6Kogpc0dSi/V7LR4AViJ5sUu6TOoLJJjRhb0OAFj0DPgJsxfhVqSqIJNrqLYE
FBnqRr3qasr6Y6N10I6AYdzJFPMU1S7fRTX0BJjL3ePR25ITBbsmUTGs8XQCA7CU
tQIDAQAB
-----END PUBLIC KEY-----
"""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def craft(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A compact JWS signed by HMAC-SHA256 with ``key`` whatever ``header["alg"]`` says; no key: empty signature."""
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def good_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iss": "clipmind",
        "aud": "clipmind-api",
        "sub": str(USER),
        "role": "user",
        "jti": uuid.uuid4().hex,
        "iat": T0,
        "nbf": T0,
        "exp": T0 + 900,
    }
    for name, value in changes.items():
        if value is ...:
            del payload[name]
        else:
            payload[name] = value
    return payload


def hs256(payload: dict[str, Any], *, kid: str | None = "k2", key: bytes = KEY_NEW) -> str:
    return craft({"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid is not None else {})}, payload, key)


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner({"k2": KEY_NEW, "k1": KEY_OLD}, active_kid="k2")


def _tamper_payload(signer: TokenSigner) -> str:
    token, _ = signer.issue(USER, "user", now=NOW)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    return f"{header}.{b64url_json(claims)}.{signature}"


def _tamper_signature(signer: TokenSigner) -> str:
    token, _ = signer.issue(USER, "user", now=NOW)
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return f"{header}.{payload}.{b64url(bytes(raw))}"


# name -> (token maker, expected reason)
ATTACKS: dict[str, tuple[Callable[[TokenSigner], str], str]] = {
    "alg none": (
        lambda _: craft({"alg": "none", "typ": "JWT", "kid": "k2"}, good_payload(role="admin"), None),
        "TOKEN_INVALID",
    ),
    "alg none, upper case": (
        lambda _: craft({"alg": "NONE", "typ": "JWT", "kid": "k2"}, good_payload(), None),
        "TOKEN_INVALID",
    ),
    "HS512 with the real key": (
        lambda _: jwt.encode(good_payload(), KEY_NEW, algorithm="HS512", headers={"kid": "k2"}),
        "TOKEN_INVALID",
    ),
    "RSA public key as HS256 secret": (
        lambda _: hs256(good_payload(role="admin"), key=RSA_PUBLIC_PEM.encode()),
        "TOKEN_INVALID",
    ),
    "RS256 header, signed over the public key": (
        lambda _: craft({"alg": "RS256", "typ": "JWT", "kid": "k2"}, good_payload(), RSA_PUBLIC_PEM.encode()),
        "TOKEN_INVALID",
    ),
    "RS256 header, signed with the real key": (
        lambda _: craft({"alg": "RS256", "typ": "JWT", "kid": "k2"}, good_payload(), KEY_NEW),
        "TOKEN_INVALID",
    ),
    "expired": (lambda _: hs256(good_payload(iat=T0 - 1000, nbf=T0 - 1000, exp=T0 - 100)), "TOKEN_EXPIRED"),
    "nbf in the future": (lambda _: hs256(good_payload(nbf=T0 + 600)), "TOKEN_INVALID"),
    "iat in the future": (lambda _: hs256(good_payload(iat=T0 + 600)), "TOKEN_INVALID"),
    "wrong iss": (lambda _: hs256(good_payload(iss="evil")), "TOKEN_INVALID"),
    "wrong aud": (lambda _: hs256(good_payload(aud="other-api")), "TOKEN_INVALID"),
    "aud as a list": (lambda _: hs256(good_payload(aud=["clipmind-api", "other-api"])), "TOKEN_INVALID"),
    "no exp": (lambda _: hs256(good_payload(exp=...)), "TOKEN_INVALID"),
    "no iat": (lambda _: hs256(good_payload(iat=...)), "TOKEN_INVALID"),
    "no nbf": (lambda _: hs256(good_payload(nbf=...)), "TOKEN_INVALID"),
    "no iss": (lambda _: hs256(good_payload(iss=...)), "TOKEN_INVALID"),
    "no aud": (lambda _: hs256(good_payload(aud=...)), "TOKEN_INVALID"),
    "no sub": (lambda _: hs256(good_payload(sub=...)), "TOKEN_INVALID"),
    "no jti": (lambda _: hs256(good_payload(jti=...)), "TOKEN_INVALID"),
    "exp not a number": (lambda _: hs256(good_payload(exp="tomorrow")), "TOKEN_INVALID"),
    "exp a boolean": (lambda _: hs256(good_payload(exp=True)), "TOKEN_INVALID"),
    "tampered payload (role admin)": (_tamper_payload, "TOKEN_INVALID"),
    "tampered signature": (_tamper_signature, "TOKEN_INVALID"),
    "unknown kid": (lambda _: hs256(good_payload(), kid="k9"), "TOKEN_INVALID"),
    "unknown kid, signed with an unknown key": (
        lambda _: hs256(good_payload(), kid="k9", key=b"a" * 32),
        "TOKEN_INVALID",
    ),
    "no kid": (lambda _: hs256(good_payload(), kid=None), "TOKEN_INVALID"),
    "kid not a string": (
        lambda _: craft({"alg": "HS256", "typ": "JWT", "kid": ["k2"]}, good_payload(), KEY_NEW),
        "TOKEN_INVALID",
    ),
    "kid of one key, signed with the other": (lambda _: hs256(good_payload(), kid="k1"), "TOKEN_INVALID"),
    "sub not a UUID": (lambda _: hs256(good_payload(sub="alice")), "TOKEN_INVALID"),
    "sub a UUID in another form": (lambda _: hs256(good_payload(sub=USER.hex)), "TOKEN_INVALID"),
    "sub not a string": (lambda _: hs256(good_payload(sub=12345)), "TOKEN_INVALID"),
    "role not allowed": (lambda _: hs256(good_payload(role="root")), "TOKEN_INVALID"),
    "role missing": (lambda _: hs256(good_payload(role=...)), "TOKEN_INVALID"),
    "role not a string": (lambda _: hs256(good_payload(role=["admin"])), "TOKEN_INVALID"),
    "payload not an object": (
        lambda _: f"{b64url_json({'alg': 'HS256', 'kid': 'k2'})}.{b64url(b'[1]')}.{b64url(b'x' * 32)}",
        "TOKEN_INVALID",
    ),
    "not a JWT": (lambda _: "not-a-token", "TOKEN_INVALID"),
    "empty": (lambda _: "", "TOKEN_INVALID"),
    "two segments": (lambda _: ".".join(hs256(good_payload()).split(".")[:2]), "TOKEN_INVALID"),
    "huge": (lambda _: hs256(good_payload(pad="x" * 10_000)), "TOKEN_INVALID"),
}


@pytest.mark.parametrize("make_token,reason", list(ATTACKS.values()), ids=list(ATTACKS))
def test_attack_is_refused(signer: TokenSigner, make_token: Callable[[TokenSigner], str], reason: str) -> None:
    token = make_token(signer)
    with pytest.raises(Unauthenticated) as caught:
        signer.verify(token, now=NOW)
    assert caught.value.reason == reason
    assert caught.value.code == "UNAUTHENTICATED"
    for part in (p for p in token.split(".") if len(p) >= 4):
        assert part not in str(caught.value), "the error must not quote the token"


def test_a_valid_hand_made_token_passes_the_same_checks(signer: TokenSigner) -> None:
    """The crafting helpers make tokens that verify when nothing is wrong, so each refusal is its attack's."""
    claims = signer.verify(hs256(good_payload()), now=NOW)
    assert claims.user_id == USER and claims.key_id == "k2"


def test_issued_token_round_trips(signer: TokenSigner) -> None:
    token, issued = signer.issue(USER, "admin", now=NOW)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": "k2"}
    payload = jwt.decode(
        token,
        KEY_NEW,
        algorithms=["HS256"],
        options={
            "verify_signature": True,
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "verify_aud": False,
        },
    )
    assert payload["sub"] == str(USER) and payload["role"] == "admin"
    assert payload["iss"] == "clipmind" and payload["aud"] == "clipmind-api"
    assert payload["iat"] == payload["nbf"] == T0 and payload["exp"] == T0 + 900
    assert len(payload["jti"]) == 32 and int(payload["jti"], 16) >= 0

    verified = signer.verify(token, now=NOW + timedelta(minutes=10))
    assert verified == issued
    assert verified == Claims(
        user_id=USER,
        role="admin",
        jti=payload["jti"],
        issued_at=NOW,
        expires_at=NOW + timedelta(seconds=900),
        key_id="k2",
    )


def test_each_token_gets_its_own_jti(signer: TokenSigner) -> None:
    assert signer.issue(USER, "user", now=NOW)[1].jti != signer.issue(USER, "user", now=NOW)[1].jti


def test_expiry_honours_the_leeway(signer: TokenSigner) -> None:
    token, claims = signer.issue(USER, "user", now=NOW)
    assert signer.verify(token, now=claims.expires_at + timedelta(seconds=4)) == claims
    with pytest.raises(Unauthenticated) as caught:
        signer.verify(token, now=claims.expires_at + timedelta(seconds=5))
    assert caught.value.reason == "TOKEN_EXPIRED"


def test_small_clock_skew_is_tolerated_before_nbf(signer: TokenSigner) -> None:
    token, claims = signer.issue(USER, "user", now=NOW)
    assert signer.verify(token, now=NOW - timedelta(seconds=5)) == claims
    with pytest.raises(Unauthenticated):
        signer.verify(token, now=NOW - timedelta(seconds=6))


def test_custom_issuer_audience_and_ttl() -> None:
    signer = TokenSigner({"a": KEY_NEW}, active_kid="a", issuer="me", audience="them", access_ttl_s=60)
    token, claims = signer.issue(USER, "system", now=NOW)
    assert claims.expires_at == NOW + timedelta(seconds=60)
    assert signer.verify(token, now=NOW).role == "system"
    with pytest.raises(Unauthenticated):
        TokenSigner({"a": KEY_NEW}, active_kid="a").verify(token, now=NOW)


def test_token_signed_with_a_rotated_out_key_still_verifies() -> None:
    before = TokenSigner({"k1": KEY_OLD}, active_kid="k1")
    old_token, old_claims = before.issue(USER, "user", now=NOW)

    after = TokenSigner({"k2": KEY_NEW, "k1": KEY_OLD}, active_kid="k2")
    assert after.verify(old_token, now=NOW) == old_claims
    assert old_claims.key_id == "k1"
    new_token, new_claims = after.issue(USER, "user", now=NOW)
    assert new_claims.key_id == "k2"
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"

    dropped = TokenSigner({"k2": KEY_NEW}, active_kid="k2")
    with pytest.raises(Unauthenticated):
        dropped.verify(old_token, now=NOW)
    assert dropped.verify(new_token, now=NOW) == new_claims


def test_issue_refuses_an_unknown_role_and_a_naive_now(signer: TokenSigner) -> None:
    with pytest.raises(ValueError):
        signer.issue(USER, "root", now=NOW)
    with pytest.raises(ValueError):
        signer.issue(USER, "user", now=datetime(2025, 6, 1, 12, 0, 0))


def test_without_now_the_wall_clock_is_used(signer: TokenSigner) -> None:
    token, claims = signer.issue(USER, "user")
    assert signer.verify(token) == claims


def test_a_31_byte_key_is_refused_at_construction_naming_its_kid() -> None:
    with pytest.raises(ValueError, match="'short'"):
        TokenSigner({"ok": KEY_NEW, "short": b"s" * 31}, active_kid="ok")
    TokenSigner({"ok": b"s" * 32}, active_kid="ok")  # 32 bytes is enough


@pytest.mark.parametrize(
    "keys,active,match",
    [
        ({}, "k1", "at least one"),
        ({"k1": KEY_NEW}, "k2", "'k2'"),
        ({"pem": RSA_PUBLIC_PEM.encode()}, "pem", "'pem'"),
    ],
    ids=["no keys", "active kid not configured", "PEM as a secret"],
)
def test_bad_signer_configuration(keys: dict[str, bytes], active: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TokenSigner(keys, active_kid=active)


@pytest.mark.parametrize("ttl,leeway", [(0, 5), (-1, 5), (float("nan"), 5), (900, -1)])
def test_bad_ttl_or_leeway(ttl: float, leeway: float) -> None:
    with pytest.raises(ValueError):
        TokenSigner({"k": KEY_NEW}, active_kid="k", access_ttl_s=ttl, leeway_s=leeway)


# --- load_keys ---------------------------------------------------------------------------------------


def test_load_keys_first_entry_is_active() -> None:
    spec = f"k2:{b64url(KEY_NEW)}, k1:{base64.urlsafe_b64encode(KEY_OLD).decode()}"  # padded or not
    keys, active = load_keys(spec)
    assert keys == {"k2": KEY_NEW, "k1": KEY_OLD}
    assert active == "k2"
    signer = TokenSigner(keys, active_kid=active)
    token, claims = signer.issue(USER, "user", now=NOW)
    assert signer.verify(token, now=NOW) == claims


def test_generated_keys_are_long_random_and_round_trip_through_the_setting() -> None:
    first, second = generate_key(), generate_key()
    assert len(first) >= 32 and first != second
    keys, active = load_keys(f"{format_key('new', first)},{format_key('old', second)}")
    assert keys == {"new": first, "old": second} and active == "new"


@pytest.mark.parametrize(
    "spec,match",
    [
        ("", "empty"),
        ("   ", "empty"),
        (f"k1:{b64url(KEY_NEW)},", "entry 2 is empty"),
        (b64url(KEY_NEW), "kid:base64url"),
        (f":{b64url(KEY_NEW)}", "invalid key id"),
        (f"k 1:{b64url(KEY_NEW)}", "invalid key id"),
        (f"k1:{b64url(KEY_NEW)},k1:{b64url(KEY_OLD)}", "'k1' appears twice"),
        ("k1:not*base64!", "'k1' is not base64url"),
        ("k1:", "'k1' is not base64url"),
        ("k1:a", "'k1' is not base64url"),
        (f"k1:{b64url(b'x' * 31)}", "'k1' is 31 bytes"),
    ],
)
def test_load_keys_errors(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        load_keys(spec)
    secret = spec.partition(":")[2]
    if len(secret) > 8:
        assert secret not in str(caught.value), "the error must not quote the secret"
