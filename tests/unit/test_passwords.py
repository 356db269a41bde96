"""Password hashing (argon2id) and the strength rule."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.identity.passwords import (
    check_strength,
    hash_password,
    hash_password_async,
    needs_rehash,
    verify_password,
    verify_password_async,
)

GOOD = "Correct-Horse-7"


@pytest.fixture(scope="module")
def good_hash() -> str:
    return hash_password(GOOD)


def test_hash_is_argon2id(good_hash: str) -> None:
    assert good_hash.startswith("$argon2id$")
    assert GOOD not in good_hash


def test_same_password_gets_a_new_salt_each_time(good_hash: str) -> None:
    again = hash_password(GOOD)
    assert again != good_hash
    assert verify_password(again, GOOD)


def test_round_trip(good_hash: str) -> None:
    assert verify_password(good_hash, GOOD) is True


def test_wrong_password_is_false(good_hash: str) -> None:
    assert verify_password(good_hash, "Correct-Horse-8") is False
    assert verify_password(good_hash, "") is False


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not a hash",
        "$argon2id$",
        "$argon2id$v=19$m=65536,t=3,p=4$$",
        "$argon2id$v=19$m=65536,t=3,p=4$!!!!$!!!!",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
    ],
)
def test_garbage_hash_is_false_not_an_error(garbage: str) -> None:
    assert verify_password(garbage, GOOD) is False
    assert needs_rehash(garbage) is True


def test_truncated_hash_is_false(good_hash: str) -> None:
    assert verify_password(good_hash[:-4], GOOD) is False


def test_current_hash_needs_no_rehash(good_hash: str) -> None:
    assert needs_rehash(good_hash) is False


def test_hash_with_weaker_parameters_needs_rehash() -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(GOOD)
    assert verify_password(weak, GOOD) is True
    assert needs_rehash(weak) is True


async def test_async_variants() -> None:
    hashed = await hash_password_async(GOOD)
    assert hashed.startswith("$argon2id$")
    assert await verify_password_async(hashed, GOOD) is True
    assert await verify_password_async(hashed, "nope-Nope-123") is False


# --- strength rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password,email",
    [
        ("Correct-Horse-7", ""),  # 15 chars, 4 classes
        ("abcdefGHIJ12", ""),  # exactly 12, 3 classes (lower, upper, digit)
        ("abcdefghij1!", ""),  # 3 classes (lower, digit, other)
        ("correct horse battery staple", ""),  # long passphrase: variety not needed
        ("abcdefghijklmnop", ""),  # exactly 16, one class
        ("Zebra-Lamp-9-Tree", "al@example.com"),  # local part shorter than 3: not checked
        ("Zebra-Lamp-9-Tree", "alice@example.com"),
        ("x" * 1023 + "y", ""),  # 1024 characters
        ("Pässwörter-Sind-1", ""),  # non-ASCII letters count as lower/upper
    ],
)
def test_strong_passwords_pass(password: str, email: str) -> None:
    check_strength(password, email=email)


@pytest.mark.parametrize(
    "password,email,words",
    [
        ("Short-1a", "", "at least 12"),
        ("", "", "at least 12"),
        ("Abcdefghij1", "", "at least 12"),  # 11
        ("Ab1-" * 256 + "x", "", "at most 1024"),  # 1025
        ("a" * 20, "", "repeated"),
        ("!" * 12, "", "repeated"),
        ("abcdefghijkl", "", "at least 3 of"),  # 12, one class
        ("abcdefghijk1", "", "at least 3 of"),  # two classes
        ("ABCDEFGH1234567", "", "at least 3 of"),  # 15, two classes
        ("Alice-Secret-99", "alice@example.com", "email"),
        ("my-ALICE-pass-99", "Alice@Example.com", "email"),  # case-insensitive
        ("x-bob-Secret-99", "bob@example.com", "email"),  # exactly 3 characters
    ],
)
def test_weak_passwords_are_refused(password: str, email: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_strength(password, email=email)
    error = caught.value
    assert error.reason == "WEAK_PASSWORD"
    assert [v.field for v in error.field_violations] == ["password"]
    assert words in error.field_violations[0].description
    if password:
        assert password not in str(error), "the error must not quote the password"


def test_failure_names_the_given_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_strength("short", field="user.new_password")
    assert caught.value.reason == "WEAK_PASSWORD"
    assert caught.value.field_violations[0].field == "user.new_password"
    assert caught.value.message.startswith("user.new_password: ")
