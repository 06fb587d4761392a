"""gRPC test seams: serve a GrpcApp in-process on port 0, read rich error details."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from libs.runtime.rich_status import STATUS_DETAILS_KEY
from libs.runtime.server import GrpcApp


@asynccontextmanager
async def serving(app: GrpcApp) -> AsyncIterator[grpc.aio.Channel]:
    """Starts `app`, yields a channel to it, and shuts it down gracefully afterwards."""
    await app.start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        yield channel
    finally:
        await channel.close(None)
        await app.stop()


@dataclass
class RichError:
    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo | None
    bad_request: error_details_pb2.BadRequest | None

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.bad_request.field_violations] if self.bad_request else []


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """The status of a failed call with its ErrorInfo and BadRequest details, if any."""
    info = bad_request = None
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status.FromString(
                value if isinstance(value, bytes) else value.encode()
            )
            info, bad_request = details_of(status)
    return RichError(error.code(), error.details() or "", info, bad_request)


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
