"""Who may ask for which priority (services/common/priority.py): users for standard or batch work, administrators
and the system for any; unset is the default; an unknown value names the field."""

from __future__ import annotations

import uuid

import pytest
from clipmind.type.v1 import priority_pb2

from services.common import priority
from services.common.errors import InvalidArgument, PermissionDenied
from services.common.principal import SYSTEM, Principal

USER, ADMIN = Principal(uuid.uuid4(), "user"), Principal(uuid.uuid4(), "admin")


def test_users_ask_for_standard_or_batch_and_administrators_for_any() -> None:
    assert priority.requested(USER, priority_pb2.PRIORITY_UNSPECIFIED) == "STANDARD"
    assert priority.requested(USER, priority_pb2.PRIORITY_BATCH) == "BATCH"
    assert priority.requested(USER, priority_pb2.PRIORITY_STANDARD) == "STANDARD"
    for caller in (ADMIN, SYSTEM):
        assert priority.requested(caller, priority_pb2.PRIORITY_HIGH) == "HIGH"
    with pytest.raises(PermissionDenied) as refused:
        priority.requested(USER, priority_pb2.PRIORITY_HIGH, "metadata.priority")
    assert refused.value.reason == "PRIORITY_NOT_ALLOWED" and refused.value.metadata == {"field": "metadata.priority"}
    with pytest.raises(InvalidArgument) as unknown:
        priority.requested(ADMIN, 42)
    assert [v.field for v in unknown.value.field_violations] == ["priority"]


def test_names_and_values_map_both_ways() -> None:
    for name in ("HIGH", "STANDARD", "BATCH"):
        assert priority.from_pb(priority.to_pb(name)) == name
    assert priority.from_pb(priority_pb2.PRIORITY_UNSPECIFIED) == "STANDARD"
