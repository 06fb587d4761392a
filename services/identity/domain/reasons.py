"""The error reasons identity returns (clients switch on them), as plain constants: the values
of `emporium.identity.v1.ErrorReason` (proto/emporium/identity/v1/error_reason.proto). Plain, so
the domain imports no generated code; tests/errors proves the two lists equal."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    INVALID_CLIENT = "INVALID_CLIENT"
    INVALID_GRANT = "INVALID_GRANT"
    INVALID_SCOPE = "INVALID_SCOPE"
    MISSING_CREDENTIALS = "MISSING_CREDENTIALS"
    REFRESH_TOKEN_REUSED = "REFRESH_TOKEN_REUSED"
    USER_EXISTS = "USER_EXISTS"
    USER_NOT_FOUND = "USER_NOT_FOUND"
