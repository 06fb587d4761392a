"""In-memory fakes of orders' ports (repository, catalog, stock) and a settable clock, for
domain unit tests: no broker, no database, no servers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from services.orders.domain.model import (
    MessageKind,
    Order,
    OrderMessage,
    OrderState,
    PaymentState,
    ProductInfo,
)
from services.orders.domain.ports import HoldLapsed

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class FakeRepository:
    def __init__(self) -> None:
        self.orders: dict[str, Order] = {}
        self.history: dict[str, list[Order]] = {}  # every version each order had
        self.requests: dict[str, tuple[str, str]] = {}
        self.sent: list[OrderMessage] = []
        self.handled: set[str] = set()
        # Runs once just before the next save: a competitor that gets in first.
        self.before_next_save: Callable[[], Awaitable[None]] | None = None

    async def get(self, order_id: str) -> Order | None:
        return self.orders.get(order_id)

    async def by_request_id(self, request_id: str) -> tuple[Order, str] | None:
        found = self.requests.get(request_id)
        return (self.orders[found[0]], found[1]) if found else None

    async def create(
        self, order: Order, request_id: str, fingerprint: str, messages: Sequence[OrderMessage]
    ) -> Order:
        self.orders[order.order_id] = order
        self.history[order.order_id] = [order]
        self.requests[request_id] = (order.order_id, fingerprint)
        self.sent += messages
        return order

    async def save(
        self, read: Order, changed: Order, messages: Sequence[OrderMessage], handled: str = ""
    ) -> bool:
        if self.before_next_save is not None:
            competitor, self.before_next_save = self.before_next_save, None
            await competitor()
        if handled and handled in self.handled:
            return True
        if self.orders[read.order_id].version != read.version:
            return False
        if handled:
            self.handled.add(handled)
        self.orders[read.order_id] = changed
        self.history[read.order_id].append(changed)
        self.sent += messages
        return True

    async def versions(self, order_id: str, after: int) -> list[Order]:
        return [order for order in self.history[order_id] if order.version > after]

    async def due(self, now: datetime, stalled_after: timedelta, limit: int) -> list[Order]:
        return [
            o
            for o in self.orders.values()
            if (
                o.state is OrderState.PENDING_PAYMENT
                and o.payment_deadline is not None
                and o.payment_deadline <= now
            )
            or (
                o.state in (OrderState.AUTHORIZED, OrderState.CANCELLING)
                and o.update_time <= now - stalled_after
            )
            or (
                o.state is OrderState.CONFIRMED
                and o.payment_state is PaymentState.AUTHORIZED
                and o.update_time <= now - stalled_after
            )
        ][:limit]

    def kinds(self, order: Order) -> list[MessageKind]:
        return [m.kind for m in self.sent if m.order.order_id == order.order_id]

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Order], int]:
        found = [o for o in self.orders.values() if not customer or o.customer == customer]
        return found[offset : offset + limit], len(found)


class FakeCatalog:
    def __init__(self) -> None:
        self.price = Money("EUR", 4, 0)
        self.prices: dict[str, Money] = {}  # a product's own price, else `price`

    async def products(self, product_ids: Sequence[str]) -> dict[str, ProductInfo]:
        return {p: ProductInfo(p, p.title(), self.prices.get(p, self.price)) for p in product_ids}


class FakeStock:
    def __init__(self, units: int = 10) -> None:
        self.available = units
        self.holds: dict[str, tuple[int, str]] = {}  # name -> (units, state)
        self.by_request: dict[str, str] = {}
        self.ttls: list[timedelta] = []

    async def reserve(
        self, lines: Sequence[tuple[str, int]], request_id: str, ttl: timedelta
    ) -> str:
        if request_id in self.by_request:
            return self.by_request[request_id]
        units = sum(quantity for _, quantity in lines)
        if units > self.available:
            raise DomainError(ErrorKind.FAILED_PRECONDITION, "INSUFFICIENT_STOCK", "too little")
        self.available -= units
        name = f"inventory/reservations/{uuid.uuid4().hex}"
        self.holds[name] = (units, "PENDING")
        self.by_request[request_id] = name
        self.ttls.append(ttl)
        return name

    def lapse(self, name: str) -> None:
        units, _ = self.holds[name]
        self.holds[name] = (units, "EXPIRED")
        self.available += units

    async def commit(self, reservation: str) -> None:
        units, state = self.holds[reservation]
        if state == "COMMITTED":
            return
        if state != "PENDING":
            raise HoldLapsed(reservation)
        self.holds[reservation] = (units, "COMMITTED")

    async def release(self, reservation: str) -> None:
        units, state = self.holds[reservation]
        if state == "PENDING":
            self.holds[reservation] = (units, "RELEASED")
            self.available += units
        elif state == "COMMITTED":
            raise DomainError(ErrorKind.FAILED_PRECONDITION, "RESERVATION_NOT_PENDING", "sold")
