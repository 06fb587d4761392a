"""Reads what the audit checks: every order, reservation and stock level through the services'
public List RPCs, and the provider's records through the payments provider port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from emporium.inventory.v1 import inventory_service_pb2 as inventory
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from emporium.orders.v1 import orders_service_pb2 as orders
from emporium.orders.v1 import orders_service_pb2_grpc as orders_grpc
from services.payments.domain.model import ProviderRecord
from tools.commands.audit.rules import Report, check

T = TypeVar("T")
PAGE = 1000


class ProviderLedger(Protocol):
    """The part of the payments provider port the audit uses."""

    async def records(self) -> list[ProviderRecord]: ...


@dataclass
class Sources:
    orders: orders_grpc.OrdersServiceAsyncStub
    inventory: inventory_grpc.InventoryServiceAsyncStub
    provider: ProviderLedger


async def audit(
    sources: Sources,
    *,
    settled: bool,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """Reads everything (orders first, so an order created meanwhile has no reservation or
    money the audit has seen without it) and checks the balance."""
    all_orders = await _every(
        lambda token: sources.orders.ListOrders(
            orders.ListOrdersRequest(page_size=PAGE, page_token=token)
        ),
        lambda page: page.orders,
    )
    progress(f"{len(all_orders)} orders")
    reservations = await _every(
        lambda token: sources.inventory.ListReservations(
            inventory.ListReservationsRequest(page_size=PAGE, page_token=token)
        ),
        lambda page: page.reservations,
    )
    progress(f"{len(reservations)} reservations")
    levels = await _every(
        lambda token: sources.inventory.ListStockLevels(
            inventory.ListStockLevelsRequest(page_size=PAGE, page_token=token)
        ),
        lambda page: page.stock_levels,
    )
    progress(f"{len(levels)} stock levels")
    records = await sources.provider.records()
    progress(f"{len(records)} provider records")
    return check(all_orders, reservations, levels, records, now=datetime.now(UTC), settled=settled)


async def _every(
    fetch: Callable[[str], Awaitable[Any]], items: Callable[[Any], Sequence[T]]
) -> list[T]:
    found: list[T] = []
    token = ""
    while True:
        page = await fetch(token)
        found += items(page)
        token = page.next_page_token
        if not token:
            return found
