"""One exception tree for the whole mesh, keyed by gRPC status code.

Domain code raises these; it never imports grpc. The gRPC interceptor in
``services.common.grpc_errors`` turns them into ``google.rpc.Status`` with an
``ErrorInfo`` (stable UPPER_SNAKE ``reason``) and, for bad requests,
``BadRequest`` field violations. Anything else becomes INTERNAL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ERROR_DOMAIN = "clipmind.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: ``field`` is a dotted path, ``description`` says what is wrong."""

    field: str
    description: str


@dataclass
class ClipMindError(Exception):
    """Base of every expected error. ``code`` is the gRPC status code name (e.g. ``NOT_FOUND``)."""

    message: str
    reason: str = "UNKNOWN"
    field_violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    retry_delay_s: float | None = None  # sent as google.rpc.RetryInfo: when a retry may succeed

    code = "UNKNOWN"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"


class InvalidArgument(ClipMindError):
    code = "INVALID_ARGUMENT"


class NotFound(ClipMindError):
    code = "NOT_FOUND"


class AlreadyExists(ClipMindError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(ClipMindError):
    code = "FAILED_PRECONDITION"


class Aborted(ClipMindError):
    code = "ABORTED"


class OutOfRange(ClipMindError):
    code = "OUT_OF_RANGE"


class ResourceExhausted(ClipMindError):
    code = "RESOURCE_EXHAUSTED"


class PermissionDenied(ClipMindError):
    code = "PERMISSION_DENIED"


class Unauthenticated(ClipMindError):
    code = "UNAUTHENTICATED"


class Unavailable(ClipMindError):
    code = "UNAVAILABLE"


class DeadlineExceeded(ClipMindError):
    code = "DEADLINE_EXCEEDED"


class Unimplemented(ClipMindError):
    code = "UNIMPLEMENTED"


class Internal(ClipMindError):
    code = "INTERNAL"


def invalid_field(field_path: str, description: str, reason: str = "INVALID_FIELD") -> InvalidArgument:
    """Shortcut for the common case: one bad field."""
    return InvalidArgument(
        message=f"{field_path}: {description}",
        reason=reason,
        field_violations=[FieldViolation(field_path, description)],
    )
