"""A whole shop in this process for the saga's acceptance tests: catalog, inventory, orders and
payments from the fleet builder (port 0, found through the fleet's local registry), each with its
own database of the kind the test runs on, a real broker vhost, and the balance audit over their
public APIs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.type import money_pb2

from emporium.catalog.v1 import catalog_service_pb2 as catalog_pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from emporium.catalog.v1 import product_pb2
from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from emporium.orders.v1 import orders_service_pb2 as pb
from emporium.orders.v1 import orders_service_pb2_grpc as pb_grpc
from libs.testing.broker import EventTap
from libs.testing.databases import fresh_postgres_database, sqlite_url
from services.payments.adapters.simulator import SimulatedProvider
from tools.commands.audit.reading import Sources, audit
from tools.commands.audit.rules import Report
from tools.commands.run.fleet import in_process_fleet

PRODUCT = "mug"
Request = TypeVar("Request", pb.CreateOrderRequest, pb.CancelOrderRequest)
# Down, timed out, or shed by an overloaded server: a client tries again later.
_RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
_ATTEMPTS = 30  # about 25 s of backoff at most
PRICE = money_pb2.Money(currency_code="USD", units=9, nanos=500_000_000)


@dataclass
class Shop:
    orders: pb_grpc.OrdersServiceAsyncStub
    inventory: inventory_grpc.InventoryServiceAsyncStub
    provider: SimulatedProvider
    payment_events: EventTap

    async def place(self, quantity: int = 1, card: str = "cards/visa") -> pb.Order:
        """CreateOrder as a client does it: on a busy machine, again with the same request_id
        (the first order comes back) when the call timed out or an upstream was unavailable."""
        request = pb.CreateOrderRequest(
            order=pb.Order(
                customer="customers/ann",
                lines=[pb.OrderLine(product=f"products/{PRODUCT}", quantity=quantity)],
                payment_method=card,
            ),
            request_id=str(uuid.uuid4()),
        )
        return await self.call(self.orders.CreateOrder, request)

    async def cancel(self, name: str) -> pb.Order:
        return await self.call(self.orders.CancelOrder, pb.CancelOrderRequest(name=name))

    @staticmethod
    async def call(method: Callable[[Request], Awaitable[pb.Order]], request: Request) -> pb.Order:
        """One call, again (the same request) while the server is down, slow or shedding:
        fifty customers arriving at once on a busy machine are shed for a few seconds."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await method(request)
            except grpc.aio.AioRpcError as error:
                if attempt == _ATTEMPTS or error.code() not in _RETRYABLE:
                    raise
            await asyncio.sleep(min(0.2 * attempt, 1.0))  # a client's backoff
        raise AssertionError("unreachable")

    async def final_state(self, name: str) -> pb.Order:
        """The order once terminal: WatchOrder ends at a terminal state."""
        updates = [u async for u in self.orders.WatchOrder(pb.WatchOrderRequest(name=name))]
        return updates[-1]

    async def stock(self) -> inventory_pb.StockLevel:
        return await self.inventory.GetStockLevel(
            inventory_pb.GetStockLevelRequest(name=f"inventory/items/{PRODUCT}")
        )

    async def audit(self, *, settled: bool) -> Report:
        return await audit(Sources(self.orders, self.inventory, self.provider), settled=settled)

    async def settled_audit(self, within: float) -> Report:
        """The settled audit, once it passes or `within` seconds have gone by. Every change at
        the provider is followed by a payments event (a capture, a void, a late
        authorization let go), so the audit is repeated after each new event, not polled."""

        async def balanced() -> Report:
            while True:
                before = len(self.payment_events.events)
                report = await self.audit(settled=True)
                if report.ok:
                    return report
                await self.payment_events.wait_for(
                    lambda events, seen=before: len(events) > seen  # type: ignore[misc]
                )

        try:
            return await asyncio.wait_for(balanced(), within)
        except TimeoutError:
            return await self.audit(settled=True)


@asynccontextmanager
async def databases(kind_of: str, directory: Path, count: int) -> AsyncIterator[list[str]]:
    """`count` fresh databases of the kind `kind_of` is (a SQLite or PostgreSQL URL)."""
    if kind_of.startswith("sqlite"):
        yield [sqlite_url(directory) for _ in range(count)]
        return
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(fresh_postgres_database()) for _ in range(count)]


@asynccontextmanager
async def running_shop(
    database_url: str,
    amqp_url: str,
    directory: Path,
    *,
    units: int = 1000,
    orders: dict[str, Any] | None = None,
    payments: dict[str, Any] | None = None,
    inventory: dict[str, Any] | None = None,
) -> AsyncIterator[Shop]:
    """The fleet builder's in-process catalog, inventory, orders and payments, each on its own
    database of `database_url`'s kind, with `units` of PRODUCT in stock."""
    ledger = directory / "ledger.sqlite3"
    async with AsyncExitStack() as stack:
        catalog_db, inventory_db, orders_db, payments_db = await stack.enter_async_context(
            databases(database_url, directory, 4)
        )
        payment_events = await stack.enter_async_context(EventTap(amqp_url, "payments.#"))
        fleet = await stack.enter_async_context(
            in_process_fleet(
                directory,
                amqp_url,
                only=("catalog", "inventory", "orders", "payments"),
                settings={
                    "catalog": {"database_url": catalog_db, "seed_sample_products": False},
                    "inventory": {
                        "database_url": inventory_db,
                        "grace_seconds": 1,
                        **(inventory or {}),
                    },
                    "orders": {
                        "database_url": orders_db,
                        "outbox_poll_seconds": 0.2,
                        "watch_poll_seconds": 1,
                        "upstream_timeout_seconds": 5,  # inventory on a busy 2-core machine
                        "grace_seconds": 2,
                        **(orders or {}),
                    },
                    "payments": {
                        "database_url": payments_db,
                        "provider_ledger": ledger,
                        "outbox_poll_seconds": 0.2,
                        "retry_delays_seconds": (0.1, 0.5),
                        "grace_seconds": 2,
                        **(payments or {}),
                    },
                },
            )
        )
        stock = await stock_shelves(fleet.channels["catalog"], fleet.channels["inventory"], units)
        provider = SimulatedProvider(ledger)
        stack.callback(provider.close)
        yield Shop(
            pb_grpc.OrdersServiceStub(fleet.channels["orders"]), stock, provider, payment_events
        )


async def stock_shelves(
    catalog: grpc.aio.Channel, inventory: grpc.aio.Channel, units: int
) -> inventory_grpc.InventoryServiceAsyncStub:
    """PRODUCT in the catalog, with `units` of it in stock; returns inventory's stub."""
    await catalog_grpc.CatalogServiceStub(catalog).CreateProduct(
        catalog_pb.CreateProductRequest(
            product_id=PRODUCT,
            product=product_pb2.Product(sku="MUG", title="Mug", price=PRICE),
        )
    )
    stock = inventory_grpc.InventoryServiceStub(inventory)
    adjust = stock.AdjustStock(None)
    await adjust.write(
        inventory_pb.AdjustStockRequest(item=f"inventory/items/{PRODUCT}", delta=units)
    )
    await adjust.read()
    await adjust.done_writing()
    return stock
