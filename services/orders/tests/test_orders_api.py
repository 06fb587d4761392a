"""OrdersService with real catalog and inventory servers on port 0, found through a local
discovery registry, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import grpc
import pytest
from google.type import money_pb2

from emporium.catalog.v1 import catalog_service_pb2 as catalog_pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from emporium.catalog.v1 import product_pb2
from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from emporium.orders.v1 import orders_service_pb2 as pb
from emporium.orders.v1 import orders_service_pb2_grpc as pb_grpc
from libs.server.grpc_app import GrpcApp
from libs.testing.rpc import rich_error
from services.inventory.app import build as build_inventory
from services.inventory.config import InventorySettings
from tools.commands.run.fleet import in_process_fleet

OrdersStub: TypeAlias = "pb_grpc.OrdersServiceAsyncStub"


@dataclass
class Shop:
    orders: OrdersStub
    inventory_app: GrpcApp
    inventory: inventory_grpc.InventoryServiceAsyncStub
    inventory_database: Path
    amqp_url: str
    directory: Path

    @asynccontextmanager
    async def payments(self, latency: float = 0.0) -> AsyncIterator[None]:
        """The payments worker, for tests that follow an order to its end."""
        async with in_process_fleet(
            self.directory,
            self.amqp_url,
            only=("payments",),
            settings={
                "payments": {"provider_latency_seconds": latency, "outbox_poll_seconds": 0.2}
            },
        ):
            yield


@pytest.fixture
async def shop(database_url: str, amqp_url: str, tmp_path: Path) -> AsyncIterator[Shop]:
    async with in_process_fleet(
        tmp_path,
        amqp_url,
        only=("catalog", "inventory", "orders"),
        settings={
            "catalog": {"seed_sample_products": False},
            "inventory": {"grace_seconds": 1},
            "orders": {
                "database_url": database_url,
                "outbox_poll_seconds": 0.2,
                "watch_poll_seconds": 5,
                "upstream_timeout_seconds": 1,
                "upstream_breaker_cooldown_seconds": 0.3,
            },
        },
    ) as fleet:
        catalog_channel, inventory_channel = fleet.channels["catalog"], fleet.channels["inventory"]
        inventory_app, orders_channel = fleet.apps["inventory"], fleet.channels["orders"]
        inventory_database = tmp_path / "inventory.sqlite3"
        products = catalog_grpc.CatalogServiceStub(catalog_channel)
        inventory = inventory_grpc.InventoryServiceStub(inventory_channel)
        for product_id, units in (("mug", 8), ("jar", 5)):
            await products.CreateProduct(
                catalog_pb.CreateProductRequest(
                    product_id=product_id,
                    product=product_pb2.Product(
                        sku=product_id.upper(),
                        title=product_id.title(),
                        price=money_pb2.Money(currency_code="USD", units=units, nanos=500_000_000),
                    ),
                )
            )
        adjust = inventory.AdjustStock(None)
        for item in ("mug", "jar"):
            await adjust.write(
                inventory_pb.AdjustStockRequest(item=f"inventory/items/{item}", delta=10)
            )
            await adjust.read()
        await adjust.done_writing()
        yield Shop(
            pb_grpc.OrdersServiceStub(orders_channel),
            inventory_app,
            inventory,
            inventory_database,
            amqp_url,
            tmp_path,
        )


def order(*lines: tuple[str, int], customer: str = "customers/ann") -> pb.Order:
    return pb.Order(
        customer=customer,
        lines=[pb.OrderLine(product=f"products/{p}", quantity=q) for p, q in lines],
    )


async def available(shop: Shop, item: str) -> int:
    level = await shop.inventory.GetStockLevel(
        inventory_pb.GetStockLevelRequest(name=f"inventory/items/{item}")
    )
    return level.available


async def test_order_reserves_stock_and_a_cancel_voids_its_payment(shop: Shop) -> None:
    created = await shop.orders.CreateOrder(
        pb.CreateOrderRequest(order=order(("mug", 2), ("jar", 1)), request_id=str(uuid.uuid4()))
    )
    assert created.state == pb.ORDER_STATE_PENDING_PAYMENT
    assert (created.total.units, created.total.nanos) == (2 * 8 + 5 + 1, 500_000_000)
    assert [line.title for line in created.lines] == ["Mug", "Jar"]
    assert created.reservation.startswith("inventory/reservations/")
    assert created.HasField("payment_deadline")
    assert (await available(shop, "mug"), await available(shop, "jar")) == (8, 9)

    watch = shop.orders.WatchOrder(pb.WatchOrderRequest(name=created.name))
    first = await watch.read()
    assert isinstance(first, pb.Order) and first.state == pb.ORDER_STATE_PENDING_PAYMENT
    cancelling = await shop.orders.CancelOrder(
        pb.CancelOrderRequest(name=created.name, reason="changed my mind")
    )
    assert cancelling.state == pb.ORDER_STATE_CANCELLING
    second = await watch.read()
    assert isinstance(second, pb.Order) and second.state == pb.ORDER_STATE_CANCELLING
    assert (await available(shop, "mug"), await available(shop, "jar")) == (10, 10)
    again = await shop.orders.CancelOrder(pb.CancelOrderRequest(name=created.name))
    assert again.etag == cancelling.etag

    async with shop.payments():  # payments hears the void (and the authorize) only now
        last = await asyncio.wait_for(watch.read(), 15)
    assert isinstance(last, pb.Order) and last.state == pb.ORDER_STATE_CANCELLED
    assert last.payment_state == pb.ORDER_PAYMENT_STATE_VOIDED
    assert last.cancel_reason == "changed my mind"
    assert await watch.read() is grpc.aio.EOF  # type: ignore[attr-defined]
    assert await watch.code() is grpc.StatusCode.OK


async def test_create_order_is_idempotent(shop: Shop) -> None:
    request = pb.CreateOrderRequest(order=order(("mug", 3)), request_id=str(uuid.uuid4()))
    first, again = await asyncio.gather(
        shop.orders.CreateOrder(request), shop.orders.CreateOrder(request)
    )
    assert first.name == again.name
    assert await available(shop, "mug") == 7
    listed = await shop.orders.ListOrders(pb.ListOrdersRequest(customer="customers/ann"))
    assert [o.name for o in listed.orders] == [first.name]


async def test_unknown_product_and_missing_stock_are_failed_preconditions(shop: Shop) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.orders.CreateOrder(
            pb.CreateOrderRequest(
                order=order(("mug", 1), ("ghost", 1)), request_id=str(uuid.uuid4())
            )
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None and error.info.reason == "PRODUCT_NOT_FOUND"
    assert error.fields == ["order.lines[1].product"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.orders.CreateOrder(
            pb.CreateOrderRequest(order=order(("jar", 11)), request_id=str(uuid.uuid4()))
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None and error.info.reason == "INSUFFICIENT_STOCK"
    assert await available(shop, "jar") == 10


async def test_inventory_down_fails_fast_then_the_breaker_opens(shop: Shop) -> None:
    await shop.inventory_app.stop()
    codes = []
    for _ in range(25):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.orders.CreateOrder(
                pb.CreateOrderRequest(order=order(("mug", 1)), request_id=str(uuid.uuid4()))
            )
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.UNAVAILABLE
        codes.append(error.info.reason if error.info else "")
    assert codes[-1] == "CIRCUIT_OPEN"


async def test_caller_budget_reaches_inventory_and_leaves_no_reservation(shop: Shop) -> None:
    """The caller gives CreateOrder 500 ms while inventory cannot write (its database is locked),
    so ReserveStock hangs. The caller hears DEADLINE_EXCEEDED in time, and inventory's handler
    was cancelled with its transaction: nothing is held once the database is free again."""
    blocker = sqlite3.connect(shop.inventory_database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.orders.CreateOrder(
                pb.CreateOrderRequest(order=order(("mug", 1)), request_id=str(uuid.uuid4())),
                timeout=0.5,
            )
        elapsed = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.0  # at the deadline (plus a busy machine's lag), not when the lock goes
    level = await shop.inventory.GetStockLevel(
        inventory_pb.GetStockLevelRequest(name="inventory/items/mug")
    )
    assert (level.reserved, level.available) == (0, 10)


async def test_under_load_orders_fails_fast_and_recovers_when_inventory_returns(
    shop: Shop,
) -> None:
    """8 callers place orders non-stop while inventory is stopped and later restarted on the same
    port. Every failure is fast: UNAVAILABLE (plain, or the open breaker's CIRCUIT_OPEN), or
    RESOURCE_EXHAUSTED `OVERLOADED` when orders sheds the callers' retries on a busy machine; no
    call outlives its 1 s deadline, and orders recovers by itself."""
    restock = shop.inventory.AdjustStock(None)
    await restock.write(inventory_pb.AdjustStockRequest(item="inventory/items/jar", delta=10000))
    await restock.read()
    await restock.done_writing()
    timeout = 1.0
    outcomes: list[tuple[grpc.StatusCode, float]] = []
    changed = asyncio.Condition()
    stop = False

    async def caller() -> None:
        while not stop:
            started = time.monotonic()
            try:
                await shop.orders.CreateOrder(
                    pb.CreateOrderRequest(order=order(("jar", 1)), request_id=str(uuid.uuid4())),
                    timeout=timeout,
                )
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            async with changed:
                outcomes.append((code, time.monotonic() - started))
                changed.notify_all()
            if code is not grpc.StatusCode.OK:
                await asyncio.sleep(0.02)  # a failing caller backs off a little

    async def until(predicate: Callable[[], bool]) -> None:
        async with changed:
            await asyncio.wait_for(changed.wait_for(predicate), 30)

    callers = [asyncio.ensure_future(caller()) for _ in range(8)]
    try:
        await until(lambda: any(code is grpc.StatusCode.OK for code, _ in outcomes))
        port = shop.inventory_app.port
        await shop.inventory_app.stop()
        down_from = len(outcomes)
        await until(
            lambda: sum(code is not grpc.StatusCode.OK for code, _ in outcomes[down_from:]) >= 40
        )
        revived = await build_inventory(
            InventorySettings(
                database_url=f"sqlite+aiosqlite:///{shop.inventory_database}", port=port
            )
        )
        await revived.start()
        back_from = len(outcomes)
        await until(lambda: any(code is grpc.StatusCode.OK for code, _ in outcomes[back_from:]))
    finally:
        stop = True
        await asyncio.gather(*callers)
    await revived.stop()
    failures = {code for code, _ in outcomes if code is not grpc.StatusCode.OK}
    assert grpc.StatusCode.UNAVAILABLE in failures
    assert failures <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert max(elapsed for _, elapsed in outcomes) < timeout + 0.1


async def watch_to_the_end(shop: Shop, name: str) -> list[pb.Order]:
    seen = []
    async for update in shop.orders.WatchOrder(pb.WatchOrderRequest(name=name)):
        seen.append(update)
    return seen


async def test_paid_order_is_confirmed_and_its_stock_committed(shop: Shop) -> None:
    async with shop.payments():
        created = await shop.orders.CreateOrder(
            pb.CreateOrderRequest(order=order(("mug", 2)), request_id=str(uuid.uuid4()))
        )
        updates = await asyncio.wait_for(watch_to_the_end(shop, created.name), 15)
        with pytest.raises(grpc.aio.AioRpcError) as too_late:
            await shop.orders.CancelOrder(pb.CancelOrderRequest(name=created.name))
    steps = [(o.state, o.payment_state) for o in updates]
    saga = [
        (pb.ORDER_STATE_PENDING_PAYMENT, pb.ORDER_PAYMENT_STATE_UNSPECIFIED),
        (pb.ORDER_STATE_AUTHORIZED, pb.ORDER_PAYMENT_STATE_AUTHORIZED),
        (pb.ORDER_STATE_CONFIRMED, pb.ORDER_PAYMENT_STATE_AUTHORIZED),
        # The watch goes on past CONFIRMED until the capture is recorded: then it is settled.
        (pb.ORDER_STATE_CONFIRMED, pb.ORDER_PAYMENT_STATE_CAPTURED),
    ]
    assert steps == saga[saga.index(steps[0]) :]  # every step from the first one seen
    error = rich_error(too_late.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None and error.info.reason == "ORDER_CONFIRMED"
    level = await shop.inventory.GetStockLevel(
        inventory_pb.GetStockLevelRequest(name="inventory/items/mug")
    )
    assert (level.on_hand, level.reserved) == (8, 0)  # sold: 2 of 10 left the shelf


async def test_declined_card_cancels_the_order_and_releases_its_stock(shop: Shop) -> None:
    async with shop.payments():
        declined = order(("jar", 4))
        declined.payment_method = "cards/declined"
        created = await shop.orders.CreateOrder(
            pb.CreateOrderRequest(order=declined, request_id=str(uuid.uuid4()))
        )
        updates = await asyncio.wait_for(watch_to_the_end(shop, created.name), 15)
    assert [o.state for o in updates] == [
        pb.ORDER_STATE_PENDING_PAYMENT,
        pb.ORDER_STATE_CANCELLED,
    ]
    assert updates[-1].cancel_reason == "payment declined: card declined"
    assert updates[-1].payment_state == pb.ORDER_PAYMENT_STATE_DECLINED
    assert await available(shop, "jar") == 10
