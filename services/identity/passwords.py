"""Password hashing (argon2id) and the password strength rule.

Hashes are argon2id in the PHC string format (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``) with
argon2-cffi's default parameters (RFC 9106's second recommended profile). The parameters live in each
hash, so raising them later only needs ``needs_rehash`` after a successful login.

Hashing is deliberately slow and CPU-bound: async code calls ``hash_password_async`` /
``verify_password_async``, which run it in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.common.errors import InvalidArgument, invalid_field

MIN_LENGTH = 12
MAX_LENGTH = 1024  # bounds hashing work per request; no real passphrase is longer
LONG_PASSPHRASE = 16  # from this length on, character variety is not required
MIN_CLASSES = 3  # of: lower case, upper case, digit, other
MIN_EMAIL_LOCAL_PART = 3
WEAK_PASSWORD = "WEAK_PASSWORD"

_hasher = PasswordHasher()  # argon2-cffi's defaults: argon2id, t=3, m=64 MiB, p=4


def hash_password(password: str) -> str:
    """An argon2id PHC string for ``password``, with a fresh random salt."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; False (never an exception) for a wrong password or
    a hash that is not a valid argon2 string."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with other parameters than today's (rehash it after a successful login).

    A string that is not an argon2 hash at all also needs one (it could never verify anyway).
    """
    try:
        return _hasher.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True


async def hash_password_async(password: str) -> str:
    """``hash_password`` in a worker thread: argon2 takes tens of milliseconds of CPU."""
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password_hash: str, password: str) -> bool:
    """``verify_password`` in a worker thread."""
    return await asyncio.to_thread(verify_password, password_hash, password)


# Hand-written on purpose: a small rule that can be stated in one paragraph of the API docs and checked
# identically by the web form. A zxcvbn-style strength estimator would be a heavier dependency (word lists)
# whose verdicts users cannot predict.
def check_strength(password: str, *, email: str = "", field: str = "password") -> None:
    """Raise ``InvalidArgument`` (reason ``WEAK_PASSWORD``, naming ``field``) unless the password is strong.

    The rule: 12 to 1024 characters; at least 3 of lower case, upper case, digits and other characters,
    unless it is 16 characters or longer; not one character repeated; and not containing the local part of
    the user's email (case-insensitive), when that local part has at least 3 characters.
    """
    if len(password) < MIN_LENGTH:
        raise _weak(field, f"must be at least {MIN_LENGTH} characters long")
    if len(password) > MAX_LENGTH:
        raise _weak(field, f"must be at most {MAX_LENGTH} characters long")
    if len(set(password)) == 1:
        raise _weak(field, "must not be a single repeated character")
    if len(password) < LONG_PASSPHRASE and _character_classes(password) < MIN_CLASSES:
        raise _weak(
            field,
            f"needs at least {MIN_CLASSES} of: lower case, upper case, digits, other characters "
            f"(or be at least {LONG_PASSPHRASE} characters long)",
        )
    local_part = email.strip().rpartition("@")[0] if "@" in email else email.strip()
    if len(local_part) >= MIN_EMAIL_LOCAL_PART and local_part.casefold() in password.casefold():
        raise _weak(field, "must not contain your email address")


def _character_classes(password: str) -> int:
    lower = any(c.islower() for c in password)
    upper = any(c.isupper() for c in password)
    digit = any(c.isdigit() for c in password)
    other = any(not (c.islower() or c.isupper() or c.isdigit()) for c in password)
    return lower + upper + digit + other


def _weak(field: str, description: str) -> InvalidArgument:
    return invalid_field(field, description, reason=WEAK_PASSWORD)
