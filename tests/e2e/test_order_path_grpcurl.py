"""The order path as a new user meets it: catalog, inventory and orders as processes on
loopback over mTLS with the development certificates, driven with grpcurl only
(-cacert/-cert/-key). Stock a product (bidi AdjustStock), place an order, watch it, cancel it."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.processes import ServiceProcess, start_service
from tools.certificates.__main__ import ensure

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


@pytest.fixture
async def order_path(tmp_path: Path) -> AsyncIterator[tuple[Path, dict[str, ServiceProcess]]]:
    certs = tmp_path / "certs"
    ensure(certs)
    registry = LocalRegistry(tmp_path / "registry.json")
    running: dict[str, ServiceProcess] = {}
    async with AsyncExitStack() as stack:
        for name, extra in (
            ("catalog", {"CATALOG_SEED_SAMPLE_PRODUCTS": "true"}),
            ("inventory", {}),
            ("orders", {"ORDERS_REGISTRY_FILE": str(registry.path)}),
        ):
            prefix = name.upper()
            process = await start_service(
                f"services.{name}",
                {
                    f"{prefix}_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / name}.sqlite3",
                    f"{prefix}_SECURITY": "mtls",
                    f"{prefix}_CERTS_DIR": str(certs),
                    **extra,
                },
            )
            stack.push_async_callback(process.terminate)
            registry.register(name, process.address)
            running[name] = process
        yield certs, running


def grpcurl_command(
    certs: Path, identity: str, address: str, method: str, body: object
) -> list[str]:
    return [
        GRPCURL,
        "-cacert",
        str(certs / "ca.pem"),
        "-cert",
        str(certs / f"{identity}.pem"),
        "-key",
        str(certs / f"{identity}-key.pem"),
        "-format-error",
        "-d",
        json.dumps(body),
        address,
        method,
    ]


async def grpcurl(
    certs: Path, address: str, method: str, body: object, identity: str = "operator"
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *grpcurl_command(certs, identity, address, method, body),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return await process.wait(), output.decode()


async def test_order_placed_watched_and_cancelled_with_grpcurl(
    order_path: tuple[Path, dict[str, ServiceProcess]],
) -> None:
    certs, running = order_path
    inventory, orders = running["inventory"].address, running["orders"].address

    code, out = await grpcurl(
        certs,
        inventory,
        "emporium.inventory.v1.InventoryService/AdjustStock",
        {"item": "inventory/items/mug-01", "delta": 5},
    )
    assert code == 0, out
    assert '"on_hand": "5"' in out

    code, out = await grpcurl(
        certs,
        orders,
        "emporium.orders.v1.OrdersService/CreateOrder",
        {
            "order": {
                "customer": "customers/ann",
                "lines": [{"product": "products/mug-01", "quantity": 2}],
            },
            "request_id": str(uuid.uuid4()),
        },
    )
    assert code == 0, out
    created = json.loads(out)
    assert created["state"] == "ORDER_STATE_PENDING_PAYMENT"
    assert created["total"]["units"] == "17"  # 2 x 8.99

    watch = await asyncio.create_subprocess_exec(
        *grpcurl_command(
            certs,
            "operator",
            orders,
            "emporium.orders.v1.OrdersService/WatchOrder",
            {"name": created["name"]},
        ),
        stdout=asyncio.subprocess.PIPE,
    )
    assert watch.stdout is not None
    seen = ""
    while "ORDER_STATE_PENDING_PAYMENT" not in seen:
        seen += (await asyncio.wait_for(watch.stdout.readline(), 30)).decode()

    code, out = await grpcurl(
        certs,
        orders,
        "emporium.orders.v1.OrdersService/CancelOrder",
        {"name": created["name"], "reason": "testing"},
    )
    assert code == 0, out
    rest, _ = await asyncio.wait_for(watch.communicate(), 30)
    assert "ORDER_STATE_CANCELLED" in rest.decode()
    assert await watch.wait() == 0  # the stream ended by itself at the terminal state

    code, out = await grpcurl(
        certs,
        inventory,
        "emporium.inventory.v1.InventoryService/GetStockLevel",
        {"name": "inventory/items/mug-01"},
    )
    assert code == 0 and '"available": "5"' in out


async def test_an_identity_the_policy_refuses_is_told_so(
    order_path: tuple[Path, dict[str, ServiceProcess]],
) -> None:
    certs, running = order_path
    code, out = await grpcurl(
        certs,
        running["inventory"].address,
        "emporium.inventory.v1.InventoryService/ReserveStock",
        {
            "lines": [{"item": "inventory/items/mug-01", "quantity": 1}],
            "request_id": str(uuid.uuid4()),
        },
        identity="catalog",
    )
    assert code != 0
    assert '"code": 7' in out and "CALLER_NOT_ALLOWED" in out
