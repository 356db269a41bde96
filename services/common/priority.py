"""Job priorities as requests ask for them (``clipmind.type.v1.Priority``) and who may ask for which: users for
standard or batch work, administrators and the system for any (high is for paid or urgent work)."""

from __future__ import annotations

from clipmind.type.v1 import priority_pb2

from services.common.errors import PermissionDenied, invalid_field
from services.common.principal import Principal
from services.common.queue import DEFAULT_PRIORITY, PRIORITIES

_NAMES: dict[int, str] = {priority_pb2.PRIORITY_HIGH: "HIGH", priority_pb2.PRIORITY_STANDARD: "STANDARD",
          priority_pb2.PRIORITY_BATCH: "BATCH"}
_VALUES = {name: priority_pb2.Priority.ValueType(value) for value, name in _NAMES.items()}


def requested(caller: Principal, value: int, field: str = "priority", *, default: str = DEFAULT_PRIORITY) -> str:
    """The priority ``caller`` asked for in ``field`` (unset: ``default``), if their role allows it: HIGH needs an
    administrator (PERMISSION_DENIED ``PRIORITY_NOT_ALLOWED`` otherwise); an unknown value is INVALID_ARGUMENT."""
    if not value:
        return default
    if value not in _NAMES:
        raise invalid_field(field, f"unknown priority {value}")
    name = _NAMES[value]
    if name == "HIGH" and not caller.is_admin:
        raise PermissionDenied("high priority is for administrators; ask for standard or batch",
                               reason="PRIORITY_NOT_ALLOWED", metadata={"field": field})
    return name


def to_pb(name: str) -> priority_pb2.Priority.ValueType:
    return _VALUES.get(name, priority_pb2.PRIORITY_STANDARD)


def from_pb(value: int) -> str:
    """A priority from an internal request, already checked by the service that took the user's request."""
    return _NAMES.get(value, DEFAULT_PRIORITY)


assert set(_NAMES.values()) == set(PRIORITIES)
