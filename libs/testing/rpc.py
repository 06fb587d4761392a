"""gRPC test seams: serve a GrpcApp in-process on port 0, read rich error details."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2

from libs.runtime.rich_status import details_of, status_from_trailers
from libs.server.grpc_app import GrpcApp


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
    status = status_from_trailers(error.trailing_metadata())
    info, bad_request = details_of(status) if status is not None else (None, None)
    return RichError(error.code(), error.details() or "", info, bad_request)
