"""Two inventory processes on one port (INVENTORY_WORKERS=2, SO_REUSEPORT) both serve calls, and
both answer the supervisor's SIGUSR1 with where they wait."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc

from emporium.inventory.v1 import inventory_service_pb2 as pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as pb_grpc
from libs.runtime.processes import start_service
from libs.runtime.stacks import HEADER


async def test_two_workers_on_one_port_both_serve(tmp_path: Path) -> None:
    service = await start_service(
        "services.inventory",
        {
            "INVENTORY_WORKERS": "2",
            "INVENTORY_LOG_LEVEL": "DEBUG",
            "INVENTORY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'inventory.sqlite3'}",
        },
    )
    try:
        await service.wait_for_log("serving", count=2)
        ports = {line["port"] for line in service.log_lines if line.get("message") == "serving"}
        assert ports == {service.port}

        def serving_pids() -> set[object]:
            return {
                line["pid"] for line in service.log_lines if line.get("message") == "rpc started"
            }

        calls = 0
        # Each new channel is a new connection; the kernel spreads them over the workers.
        while len(serving_pids()) < 2 and calls < 200:
            async with grpc.aio.insecure_channel(service.address) as channel:
                stub = pb_grpc.InventoryServiceStub(channel)
                await stub.ListStockLevels(pb.ListStockLevelsRequest())
            calls += 1
            await service.wait_for_log("rpc started", count=calls)
        assert len(serving_pids()) == 2

        # SIGUSR1 to the supervisor reaches both workers: each prints where it waits.
        service.process.send_signal(signal.SIGUSR1)
        await service.wait_for_log(HEADER, count=2)
        assert service.process.returncode is None
    finally:
        assert await service.terminate() == 0
