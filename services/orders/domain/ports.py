"""What orders needs from the outside: storage (with the outbox), the catalog and the
inventory."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from services.orders.domain.model import Order, OrderMessage, ProductInfo


class OrderRepository(Protocol):
    async def get(self, order_id: str) -> Order | None: ...

    async def by_request_id(self, request_id: str) -> tuple[Order, str] | None:
        """The order a request_id created, with that request's fingerprint."""
        ...

    async def create(
        self, order: Order, request_id: str, fingerprint: str, messages: Sequence[OrderMessage]
    ) -> Order:
        """Stores a new order and, in the same transaction, `messages`; if the request_id
        raced in meanwhile, returns that order (and sends nothing)."""
        ...

    async def save(
        self, read: Order, changed: Order, messages: Sequence[OrderMessage], handled: str = ""
    ) -> bool:
        """Replaces `read` by `changed` if the order is still at `read.version`, with
        `messages` (and `handled`, the id of the message that caused it, in the inbox) in the
        same transaction. False if someone else changed the order first; a message handled
        before changes nothing (True)."""
        ...

    async def due(self, now: datetime, stalled_after: timedelta, limit: int) -> list[Order]:
        """Orders the sweeper must move: PENDING_PAYMENT past their payment deadline, and,
        unchanged for `stalled_after`, AUTHORIZED or CANCELLING orders and CONFIRMED orders
        whose payment is only AUTHORIZED (its capture not heard of)."""
        ...

    async def versions(self, order_id: str, after: int) -> list[Order]:
        """The order as it was at each version after `after`, oldest first."""
        ...

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Order], int]: ...


class ProductCatalog(Protocol):
    async def products(self, product_ids: Sequence[str]) -> dict[str, ProductInfo]:
        """Every named product; raises DomainError naming any that does not exist."""
        ...


class HoldLapsed(Exception):
    """The reservation is no longer pending (it expired, or was released)."""


class StockReservations(Protocol):
    async def reserve(
        self, lines: Sequence[tuple[str, int]], request_id: str, ttl: timedelta
    ) -> str:
        """Holds stock for all lines for `ttl` (idempotent by request_id); returns the
        reservation name. Raises DomainError INSUFFICIENT_STOCK when there is too little."""
        ...

    async def commit(self, reservation: str) -> None:
        """Turns held stock into sold stock (idempotent); HoldLapsed if the hold ended."""
        ...

    async def release(self, reservation: str) -> None:
        """Returns held stock (idempotent; a lapsed hold is already returned)."""
        ...
