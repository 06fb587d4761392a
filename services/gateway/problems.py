"""Errors as RFC 9457 problem details (`application/problem+json`).

One table maps gRPC codes to HTTP statuses (the same as grpc-gateway's and AIP-193's). The
upstream's ErrorInfo reason, domain and metadata and its BadRequest field violations become
extension members, so an HTTP client sees what a gRPC client sees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2
from starlette.responses import Response

from libs.runtime.errors import DomainError
from libs.runtime.overload import pushback_ms
from libs.runtime.rich_status import details_of, status_from_trailers, status_of

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPES = "https://emporium.dev/problems/"

HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Problem(Exception):
    """An error response, raised anywhere in the gateway and rendered once."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        reason: str = "",
        code: str = "",
        domain: str = "gateway.emporium.dev",
        metadata: Mapping[str, str] | None = None,
        violations: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason
        self.code = code
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.violations = violations or []
        self.headers = dict(headers or {})

    def document(self, instance: str, request_id: str | None) -> dict[str, Any]:
        slug = (self.reason or self.code or str(self.status)).lower().replace("_", "-")
        body: dict[str, Any] = {
            "type": PROBLEM_TYPES + slug,
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.code:
            body["code"] = self.code
        if self.reason:
            body["reason"] = self.reason
            body["domain"] = self.domain
        if self.metadata:
            body["metadata"] = self.metadata
        if self.violations:
            body["violations"] = self.violations
        if request_id:
            body["request_id"] = request_id
        return body

    def response(self, instance: str, request_id: str | None) -> Response:
        return Response(
            json.dumps(self.document(instance, request_id)),
            status_code=self.status,
            media_type=PROBLEM_JSON,
            headers=self.headers,
        )


def _violations(bad_request: error_details_pb2.BadRequest | None) -> list[dict[str, str]]:
    if bad_request is None:
        return []
    return [
        {"field": v.field, "description": v.description, "reason": v.reason}
        for v in bad_request.field_violations
    ]


# RESOURCE_EXHAUSTED that means "the server is full, come back soon" (a service shedding load,
# the client kit's bulkhead), not a quota of the caller's: 503 with Retry-After, not 429.
SHED_REASONS = frozenset({"OVERLOADED", "BULKHEAD_FULL"})


def overloaded(detail: str, retry_after_ms: int) -> Problem:
    return Problem(
        503,
        detail,
        reason="OVERLOADED",
        code="RESOURCE_EXHAUSTED",
        metadata={"retry_after_ms": str(retry_after_ms)},
        headers={"Retry-After": _retry_after(retry_after_ms)},
    )


def _retry_after(milliseconds: int) -> str:
    """Retry-After is whole seconds: round up, and never 0."""
    return str(max(1, -(-milliseconds // 1000)))


def from_rpc_error(error: grpc.aio.AioRpcError) -> Problem:
    code = error.code()
    trailers = error.trailing_metadata()
    status = status_from_trailers(trailers)
    info, bad_request = details_of(status) if status is not None else (None, None)
    headers = {}
    http_status = HTTP_STATUS.get(code, 500)
    pushback = pushback_ms(trailers)
    if pushback is not None and pushback < 0:
        pushback = None  # not a wait: the server asks not to retry
    shed = code == grpc.StatusCode.RESOURCE_EXHAUSTED and (
        pushback is not None or (info is not None and info.reason in SHED_REASONS)
    )
    if code == grpc.StatusCode.UNAVAILABLE or shed:
        # An open circuit or a shedding server says when to come back; otherwise retry soon.
        retry_after_ms = int(info.metadata.get("retry_after_ms", "1000")) if info else 1000
        headers["Retry-After"] = _retry_after(pushback if pushback is not None else retry_after_ms)
    if shed:
        http_status = 503
    return Problem(
        http_status,
        error.details() or code.name,
        reason=info.reason if info else "",
        code=code.name,
        domain=info.domain if info and info.domain else "gateway.emporium.dev",
        metadata=dict(info.metadata) if info else None,
        violations=_violations(bad_request),
        headers=headers,
    )


def from_domain_error(error: DomainError) -> Problem:
    code, status = status_of(error, "gateway.emporium.dev")
    info, bad_request = details_of(status)
    return Problem(
        HTTP_STATUS[code],
        error.message,
        reason=error.reason,
        code=code.name,
        domain=info.domain if info else "gateway.emporium.dev",
        metadata=dict(error.metadata),
        violations=_violations(bad_request),
    )
