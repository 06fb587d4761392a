"""What orders needs from the outside: storage, the catalog and the inventory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.orders.domain.model import Order, OrderState, ProductInfo


class OrderRepository(Protocol):
    async def get(self, order_id: str) -> Order | None: ...

    async def by_request_id(self, request_id: str) -> tuple[Order, str] | None:
        """The order a request_id created, with that request's fingerprint."""
        ...

    async def create(self, order: Order, request_id: str, fingerprint: str) -> Order:
        """Stores a new order, and in the same transaction the request to charge it and the
        OrderCreated event; if the request_id raced in meanwhile, returns that order."""
        ...

    async def set_state(
        self, order: Order, state: OrderState, cancel_reason: str = "", handled: str = ""
    ) -> Order:
        """Moves the order and records its event in one transaction. `handled` is the id of
        the message that caused it: if it was handled before, nothing changes. Raises
        DomainError ABORTED if the order changed since `order` was read."""
        ...

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Order], int]: ...


class ProductCatalog(Protocol):
    async def products(self, product_ids: Sequence[str]) -> dict[str, ProductInfo]:
        """Every named product; raises DomainError naming any that does not exist."""
        ...


class StockReservations(Protocol):
    async def reserve(self, lines: Sequence[tuple[str, int]], request_id: str) -> str:
        """Holds stock for all lines (idempotent by request_id); returns the reservation name."""
        ...

    async def commit(self, reservation: str) -> None:
        """Turns held stock into sold stock (idempotent)."""
        ...

    async def release(self, reservation: str) -> None: ...
