"""Domain errors: what went wrong, in terms any layer may raise without importing grpc.

The RPC layer (libs.runtime.rich_status) maps each kind to a gRPC status code and sends the
reason, metadata and field violations as google.rpc.ErrorInfo and BadRequest details.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from libs.runtime.reasons import SharedReason


class ErrorKind(enum.Enum):
    """The AIP-193 categories a domain can report; each maps to one gRPC code."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, named by its path (`product.price.units`)."""

    field: str
    description: str
    reason: str = ""


@dataclass(eq=False)
class DomainError(Exception):
    """An expected failure with a stable UPPER_SNAKE reason clients can switch on."""

    kind: ErrorKind
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()
    domain: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.kind.value} {self.reason}: {self.message}"


def invalid_argument(
    reason: str, message: str, violations: Sequence[FieldViolation], **metadata: str
) -> DomainError:
    return DomainError(ErrorKind.INVALID_ARGUMENT, reason, message, metadata, violations)


def invalid_field(
    field_path: str, description: str, reason: str = SharedReason.INVALID_FIELD
) -> DomainError:
    """A request with one bad field."""
    return invalid_argument(
        reason, f"{field_path}: {description}", [FieldViolation(field_path, description, reason)]
    )


def not_found(resource: str, reason: str = SharedReason.RESOURCE_NOT_FOUND) -> DomainError:
    return DomainError(ErrorKind.NOT_FOUND, reason, f"{resource} not found", {"resource": resource})
