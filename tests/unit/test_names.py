"""Resource names: every kind formats and parses back, and a bad name is INVALID_ARGUMENT naming its field."""

from __future__ import annotations

import uuid

import pytest

from services.common import names
from services.common.errors import InvalidArgument

ID = uuid.UUID("00000000-0000-4000-8000-000000000007")
KEY = uuid.UUID("00000000-0000-4000-8000-000000000009")


@pytest.mark.parametrize(("format_", "parse", "text"), [
    (names.video_name, names.parse_video_name, f"videos/{ID}"),
    (names.job_name, names.parse_job_name, f"jobs/{ID}"),
    (names.clip_name, names.parse_clip_name, f"clips/{ID}"),
    (names.upload_name, names.parse_upload_name, f"uploads/{ID}"),
    (names.user_name, names.parse_user_name, f"users/{ID}"),
])
def test_names_format_and_parse_back(format_, parse, text: str) -> None:
    assert format_(ID) == text
    assert parse(text) == ID


def test_names_without_a_parser_of_their_own() -> None:
    assert names.dead_letter_name(ID) == f"deadLetters/{ID}"
    assert names.parse_name(f"deadLetters/{ID}", names.DEAD_LETTERS) == ID
    assert names.transcript_segment_name(ID, 3) == f"videos/{ID}/transcriptSegments/3"


@pytest.mark.parametrize(("bad", "reason"), [
    ("", "REQUIRED_FIELD"), (f"clips/{ID}", "INVALID_NAME"), ("videos/x", "INVALID_NAME"), ("videos/", "INVALID_NAME"),
    (f"videos/{ID}/thumbnail.jpg", "INVALID_NAME"),
])
def test_a_bad_name_names_its_field(bad: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        names.parse_video_name(bad, "filter.videos[2]")
    assert info.value.reason == reason
    assert [v.field for v in info.value.field_violations] == ["filter.videos[2]"]


def test_users_me_is_the_caller() -> None:
    assert names.parse_user_or_me("users/me") is None
    assert names.parse_user_or_me(f"users/{ID}", "parent") == ID
    for bad in ("", "me", f"videos/{ID}", "users/", "users/someone", f"users/{ID}/apiKeys/{KEY}"):
        with pytest.raises(InvalidArgument) as info:
            names.parse_user_or_me(bad, "parent")
        assert [v.field for v in info.value.field_violations] == ["parent"], bad


def test_api_key_names() -> None:
    assert names.api_key_name(ID, KEY) == f"users/{ID}/apiKeys/{KEY}"
    assert names.parse_api_key_name(f"users/{ID}/apiKeys/{KEY}") == (ID, KEY)
    assert names.parse_api_key_name(f"users/me/apiKeys/{KEY}") == (None, KEY)
    for bad in ("", f"users/{ID}", f"users/{ID}/keys/{KEY}", f"users/{ID}/apiKeys/x", f"users/x/apiKeys/{KEY}",
                f"users/{ID}/apiKeys/{KEY}/more"):
        with pytest.raises(InvalidArgument) as info:
            names.parse_api_key_name(bad)
        assert info.value.reason in {"REQUIRED_FIELD", "INVALID_NAME"}, bad
        assert [v.field for v in info.value.field_violations] == ["name"], bad
