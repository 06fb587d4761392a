"""Service processes: a hung shutdown ends in a bounded time and names where it waited (or says
that its event loop is blocked)."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest as Request

from libs.runtime.processes import StopHung, start_service
from libs.runtime.tests.test_overload import STUB_CODEC

HOLDER = "libs.runtime.tests.holder_server"


async def test_a_service_that_does_not_stop_is_killed_with_where_it_waited() -> None:
    service = await start_service(
        HOLDER, {"HOLDER_HANG_ON_STOP": "true", "EMPORIUM_SECURITY": "insecure"}
    )
    with pytest.raises(StopHung) as hung:
        await service.terminate(within=2.0)
    assert service.process.returncode is not None  # killed
    printout = str(hung.value)
    # The service's own printout (SIGUSR1): its stop, waiting in the hook that never ends.
    assert "in stop" in printout
    assert "in wait_forever_in_stop" in printout


async def test_a_service_that_stops_returns_its_exit_code() -> None:
    service = await start_service(HOLDER, {"EMPORIUM_SECURITY": "insecure"})
    assert await service.terminate(within=30.0) == 0
    assert any(line.get("message") == "holder stopped" for line in service.log_lines)


async def test_a_service_whose_event_loop_is_blocked_is_killed_and_says_so() -> None:
    # Freeze blocks the holder's event loop until a byte arrives on `thaw` (never, here).
    listener = socket.create_server(("127.0.0.1", 0))
    service = await start_service(
        HOLDER,
        {"HOLDER_THAW_PORT": str(listener.getsockname()[1]), "EMPORIUM_SECURITY": "insecure"},
    )
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            freeze = channel.unary_unary("/test.Holder/Freeze", **STUB_CODEC)
            frozen = asyncio.ensure_future(freeze(Request(), timeout=30))
            listener.settimeout(30)
            thaw, _ = await asyncio.to_thread(listener.accept)
            await service.wait_for_log("frozen")
            with pytest.raises(StopHung, match="its event loop is blocked"):
                await service.terminate(within=1.0)
            assert service.process.returncode is not None  # killed
            thaw.close()
            with pytest.raises(grpc.aio.AioRpcError):
                await frozen
    finally:
        listener.close()
