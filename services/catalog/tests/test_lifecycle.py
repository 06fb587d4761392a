"""The catalog as a process: configuration errors, graceful shutdown, truthful health."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from google.type import money_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from emporium.catalog.v1 import product_pb2
from libs.runtime.processes import start_service
from libs.testing.databases import fresh_postgres_database
from libs.testing.rpc import rich_error, serving
from libs.testing.tcp_proxy import TcpProxy
from services.catalog.app import build
from services.catalog.config import CatalogSettings


def new_product(sku: str) -> pb.CreateProductRequest:
    return pb.CreateProductRequest(
        product=product_pb2.Product(
            sku=sku, title=sku, price=money_pb2.Money(currency_code="USD", units=1)
        )
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CATALOG_PORT", "not-a-port"),
        ("CATALOG_DATABASE_URL", "mysql://x"),
        ("CATALOG_GRACE_SECONDS", "-1"),
    ],
)
def test_bad_setting_stops_with_its_name(variable: str, value: str) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "services.catalog"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), variable: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_finishes_in_flight_calls_and_ends_streams_cleanly(tmp_path: Path) -> None:
    database = tmp_path / "catalog.sqlite3"
    grace = 5.0
    service = await start_service(
        "services.catalog",
        {
            "CATALOG_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "CATALOG_GRACE_SECONDS": str(grace),
            "CATALOG_LOG_LEVEL": "DEBUG",
        },
    )
    channel = grpc.aio.insecure_channel(service.address)
    stub = pb_grpc.CatalogServiceStub(channel)
    try:
        watch = stub.WatchProducts(pb.WatchProductsRequest())
        await watch.initial_metadata()

        # Hold SQLite's write lock so the next writes stay in flight inside the service.
        blocker = sqlite3.connect(database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        in_flight = [
            asyncio.ensure_future(stub.CreateProduct(new_product(f"INFLIGHT-{i}")))
            for i in range(3)
        ]
        await service.wait_for_log("rpc started", count=1 + 3)  # the watch and 3 creates
        stopping_since = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        await service.wait_for_log("shutting down")

        refused = await asyncio.gather(
            stub.GetProduct(pb.GetProductRequest(name="products/x")), return_exceptions=True
        )
        assert isinstance(refused[0], grpc.aio.AioRpcError)
        assert refused[0].code() is grpc.StatusCode.UNAVAILABLE

        blocker.execute("COMMIT")
        blocker.close()
        created = await asyncio.gather(*in_flight)
        assert sorted(p.sku for p in created) == ["INFLIGHT-0", "INFLIGHT-1", "INFLIGHT-2"]

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await watch.read()  # the stream saw no change: its next read is its end
        error = rich_error(ended.value)
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert error.info is not None and error.info.reason == "SHUTTING_DOWN"

        assert await service.process.wait() == 0
        assert time.monotonic() - stopping_since < grace + 1
    finally:
        await channel.close(None)
        await service.kill()


@pytest.mark.postgres
async def test_health_is_not_serving_while_the_database_is_unreachable() -> None:
    async with fresh_postgres_database() as url:
        parts = urlsplit(url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        port = await proxy.start()
        proxied = url.replace(f"@{parts.hostname}:{parts.port}", f"@127.0.0.1:{port}")
        settings = CatalogSettings(
            database_url=proxied,
            health_check_interval_seconds=0.1,
            health_check_timeout_seconds=1.0,
        )
        async with serving(await build(settings)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            statuses = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await statuses.read()).status == health_pb2.HealthCheckResponse.SERVING

            await proxy.cut()
            assert (await statuses.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = pb_grpc.CatalogServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as unavailable:
                await stub.GetProduct(pb.GetProductRequest(name="products/any"))
            error = rich_error(unavailable.value)
            assert error.code is grpc.StatusCode.UNAVAILABLE
            assert error.info is not None and error.info.reason == "DATABASE_UNAVAILABLE"

            await proxy.start()
            assert (await statuses.read()).status == health_pb2.HealthCheckResponse.SERVING
            created = await stub.CreateProduct(new_product("BACK-1"))
            assert created.sku == "BACK-1"
            statuses.cancel()
        await proxy.cut()
