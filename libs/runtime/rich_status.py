"""Rich gRPC errors: google.rpc.Status with ErrorInfo and BadRequest details (AIP-193).

Details travel in the `grpc-status-details-bin` trailer, so grpcurl and every gRPC client see
them; grpc_status.rpc_status.from_call() reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from libs.runtime.errors import DomainError, ErrorKind, FieldViolation

STATUS_DETAILS_KEY = "grpc-status-details-bin"

GRPC_CODE: Mapping[ErrorKind, grpc.StatusCode] = {
    kind: getattr(grpc.StatusCode, kind.value) for kind in ErrorKind
}


def build_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[FieldViolation] = (),
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata or {}))
    details = [_pack(info)]
    if violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in violations
            ]
        )
        details.append(_pack(bad_request))
    return status_pb2.Status(code=_rpc_code(code), message=message, details=details)


def status_of(error: DomainError, default_domain: str) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code = GRPC_CODE[error.kind]
    status = build_status(
        code,
        error.message,
        reason=error.reason,
        domain=error.domain or default_domain,
        metadata=error.metadata,
        violations=error.violations,
    )
    return code, status


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


async def abort_with(
    context: grpc.aio.ServicerContext[object, object],
    code: grpc.StatusCode,
    status: status_pb2.Status,
) -> None:
    """Ends the RPC with `status` as rich details; raises like ServicerContext.abort."""
    await context.abort(code, status.message, trailing_metadata(status))


def status_from_trailers(trailers: object) -> status_pb2.Status | None:
    """The rich status a call's trailing metadata carries, if any."""
    for key, value in trailers or ():  # type: ignore[attr-defined]
        if key == STATUS_DETAILS_KEY:
            raw = value if isinstance(value, bytes) else str(value).encode()
            return status_pb2.Status.FromString(raw)
    return None


def details_of(
    status: status_pb2.Status,
) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None]:
    info = bad_request = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
    return info, bad_request


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _rpc_code(code: grpc.StatusCode) -> int:
    value = code.value[0]
    assert isinstance(value, int)
    return value
