"""Service processes: a hung shutdown ends in a bounded time and names where it waited."""

from __future__ import annotations

import pytest

from libs.runtime.processes import StopHung, start_service

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
