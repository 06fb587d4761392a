"""The order path as a new user meets it: catalog, inventory, orders, payments and notifications
as processes on loopback over mTLS with the development certificates and a real broker (a fresh
vhost), driven with grpcurl only (-cacert/-cert/-key). Stock a product (bidi AdjustStock), place
an order and watch it until payment confirms it; a declined card ends CANCELLED; notifications
delivers exactly one message per order event."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.runtime.processes import ServiceProcess
from tools.commands.run.fleet import running_processes

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


ORDER_PATH = ("catalog", "inventory", "orders", "payments", "notifications")


@pytest.fixture
async def order_path(
    tmp_path: Path, amqp_url: str
) -> AsyncIterator[tuple[Path, dict[str, ServiceProcess]]]:
    """The launcher's fleet (without identity and the gateway) on free ports under tmp_path."""
    async with running_processes(
        tmp_path,
        amqp_url,
        only=ORDER_PATH,
        env_overrides={name: {f"{name.upper()}_OUTBOX_POLL_SECONDS": "0.2"} for name in ORDER_PATH},
        echo_log=True,
    ) as running:
        yield tmp_path, running


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


async def place_and_watch(
    certs: Path, orders: str, payment_method: str
) -> tuple[dict[str, object], list[str], str]:
    """CreateOrder, then WatchOrder until the stream ends; returns the order, the states it
    went through and its payment state at the end."""
    code, out = await grpcurl(
        certs,
        orders,
        "emporium.orders.v1.OrdersService/CreateOrder",
        {
            "order": {
                "customer": "customers/ann",
                "lines": [{"product": "products/mug-01", "quantity": 2}],
                "payment_method": payment_method,
            },
            "request_id": str(uuid.uuid4()),
        },
    )
    assert code == 0, out
    created = json.loads(out)
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
    out_bytes, _ = await asyncio.wait_for(watch.communicate(), 30)
    assert await watch.wait() == 0  # the stream ended by itself at the terminal state
    out_text = out_bytes.decode()
    states = re.findall(r'^  "state": "(ORDER_STATE_\w+)"', out_text, re.M)
    payments = re.findall(r'^  "payment_state": "(ORDER_PAYMENT_STATE_\w+)"', out_text, re.M)
    # One message per version: a paid order's capture is a version of its own (same state),
    # the last one the stream sends.
    distinct = [state for i, state in enumerate(states) if i == 0 or states[i - 1] != state]
    return created, distinct, (payments or [""])[-1]


async def test_orders_complete_through_payment_and_notify_once_per_event(
    order_path: tuple[Path, dict[str, ServiceProcess]],
) -> None:
    directory, running = order_path
    certs = directory / "certs"
    inventory, orders = running["inventory"].address, running["orders"].address

    code, out = await grpcurl(
        certs,
        inventory,
        "emporium.inventory.v1.InventoryService/AdjustStock",
        {"item": "inventory/items/mug-01", "delta": 5},
    )
    assert code == 0, out
    assert '"on_hand": "5"' in out

    paid, paid_states, paid_payment = await place_and_watch(certs, orders, "cards/visa")
    assert paid["total"]["units"] == "17"  # type: ignore[index]  # 2 x 8.99
    # WatchOrder streams the order now, then each transition, in the saga's order. (If
    # payment completes before the watch begins, the first state seen is already the last.)
    saga = ["ORDER_STATE_PENDING_PAYMENT", "ORDER_STATE_AUTHORIZED", "ORDER_STATE_CONFIRMED"]
    assert paid_states[-1] == "ORDER_STATE_CONFIRMED"
    assert paid_payment == "ORDER_PAYMENT_STATE_CAPTURED"  # the stream ends once captured
    assert paid_states == saga[saga.index(paid_states[0]) :]  # no state skipped
    declined, declined_states, _ = await place_and_watch(certs, orders, "cards/declined")
    assert declined_states[-1] == "ORDER_STATE_CANCELLED"

    code, out = await grpcurl(
        certs,
        inventory,
        "emporium.inventory.v1.InventoryService/GetStockLevel",
        {"name": "inventory/items/mug-01"},
    )
    # 2 sold to the confirmed order; the cancelled order's 2 went back on the shelf.
    assert code == 0 and '"on_hand": "3"' in out, out
    assert '"available": "3"' in out, out

    # Four events (two created, one confirmed, one cancelled): one message each.
    await running["notifications"].wait_for_log("notification delivered", count=4)
    mail = sorted((directory / "mail" / "new").iterdir())
    subjects = sorted(m.read_text().split("Subject: ", 1)[1].split("\n", 1)[0] for m in mail)
    paid_id = str(paid["name"]).removeprefix("orders/")
    declined_id = str(declined["name"]).removeprefix("orders/")
    assert subjects == sorted(
        [
            f"We received your order {paid_id}",
            f"Your order {paid_id} is confirmed",
            f"We received your order {declined_id}",
            f"Your order {declined_id} was cancelled",
        ]
    )


async def test_an_identity_the_policy_refuses_is_told_so(
    order_path: tuple[Path, dict[str, ServiceProcess]],
) -> None:
    directory, running = order_path
    certs = directory / "certs"
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
