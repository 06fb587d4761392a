"""Order use cases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from libs.runtime.errors import DomainError, ErrorKind, FieldViolation, invalid_argument, not_found
from libs.runtime.pagination import page_request
from libs.runtime.resource_names import resource_id
from services.orders.domain.model import Order, OrderLine, OrderState
from services.orders.domain.order_feed import FeedClosed, OrderFeed
from services.orders.domain.ports import OrderRepository, ProductCatalog, StockReservations

log = logging.getLogger("emporium.orders")


def _now() -> datetime:
    return datetime.now(UTC)


class Orders:
    def __init__(
        self,
        repository: OrderRepository,
        catalog: ProductCatalog,
        stock: StockReservations,
        feed: OrderFeed,
        *,
        poll_interval: float = 1.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._repository = repository
        self._catalog = catalog
        self._stock = stock
        self._feed = feed
        self._poll_interval = poll_interval
        self._clock = clock

    async def create(
        self,
        customer: str,
        lines: list[tuple[str, int]],
        request_id: str,
        fingerprint: str,
        payment_method: str = "",
    ) -> Order:
        earlier = await self._repository.by_request_id(request_id)
        if earlier is not None:
            order, earlier_fingerprint = earlier
            if earlier_fingerprint != fingerprint:
                raise invalid_argument(
                    "REQUEST_ID_REUSED",
                    "request_id was already used for a different order",
                    [
                        FieldViolation(
                            "request_id",
                            "was already used for a different order",
                            "REQUEST_ID_REUSED",
                        )
                    ],
                )
            return order
        product_ids = [_product_id(product, i) for i, (product, _) in enumerate(lines)]
        repeated = sorted({p for p in product_ids if product_ids.count(p) > 1})
        if repeated:
            raise invalid_argument(
                "DUPLICATE_PRODUCT",
                f"each product may appear once: {', '.join(repeated)}",
                [
                    FieldViolation(
                        "order.lines", f"products/{p} appears more than once", "DUPLICATE_PRODUCT"
                    )
                    for p in repeated
                ],
            )
        products = await self._catalog.products(product_ids)
        currencies = {info.price.currency_code for info in products.values()}
        if len(currencies) > 1:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                "MIXED_CURRENCIES",
                f"the products are priced in {', '.join(sorted(currencies))}",
            )
        order_lines = tuple(
            OrderLine(pid, quantity, products[pid].price, products[pid].title)
            for pid, (_, quantity) in zip(product_ids, lines, strict=True)
        )
        # Inventory's item ids are the catalog's product ids; the same request_id makes the
        # reservation idempotent, so a retry after a crash here finds the same reservation.
        reservation = await self._stock.reserve(
            [(pid, line.quantity) for pid, line in zip(product_ids, order_lines, strict=True)],
            request_id,
        )
        now = self._clock()
        order = Order(
            uuid.uuid4().hex,
            customer,
            order_lines,
            OrderState.PENDING_PAYMENT,
            reservation,
            now,
            now,
            payment_method=payment_method or "cards/default",
        )
        stored = await self._repository.create(order, request_id, fingerprint)
        self._feed.changed(stored.order_id)
        return stored

    async def get(self, name: str) -> Order:
        order = await self._repository.get(order_id_of(name))
        if order is None:
            raise not_found(name, "ORDER_NOT_FOUND")
        return order

    async def list(self, customer: str, page_size: int, page_token: str) -> tuple[list[Order], str]:
        page = page_request(page_size, page_token, customer)
        orders, total = await self._repository.list(customer, page.offset, page.limit)
        return orders, page.next_token(len(orders), total)

    async def cancel(self, name: str, reason: str) -> Order:
        order = await self.get(name)
        if order.state is OrderState.CANCELLED:
            return order
        if order.state is OrderState.CONFIRMED:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                "ORDER_CONFIRMED",
                f"{name} is confirmed and can no longer be cancelled",
                {"order": name},
            )
        await self._stock.release(order.reservation)
        cancelled = await self._repository.set_state(
            order, OrderState.CANCELLED, reason or "cancelled by request"
        )
        self._feed.changed(order.order_id)
        return cancelled

    async def payment_succeeded(self, name: str, message_id: str) -> Order:
        """Paid: commit the stock, confirm the order. Safe to repeat (the inbox, and an
        idempotent commit at inventory)."""
        order = await self.get(name)
        if order.state is OrderState.CANCELLED:
            log.warning(
                "payment succeeded for a cancelled order; it needs a refund",
                extra={"order": name},
            )
            return order
        if order.state is OrderState.CONFIRMED:
            return order
        await self._stock.commit(order.reservation)
        confirmed = await self._repository.set_state(
            order, OrderState.CONFIRMED, handled=message_id
        )
        self._feed.changed(order.order_id)
        return confirmed

    async def payment_failed(self, name: str, reason: str, message_id: str) -> Order:
        """Declined: release the stock, cancel the order."""
        order = await self.get(name)
        if order.state.terminal:
            return order
        await self._stock.release(order.reservation)
        cancelled = await self._repository.set_state(
            order, OrderState.CANCELLED, f"payment failed: {reason}", handled=message_id
        )
        self._feed.changed(order.order_id)
        return cancelled

    async def watch(self, name: str) -> AsyncIterator[Order]:
        """The order now, then at each change, until a terminal state (FeedClosed at shutdown)."""
        order_id = order_id_of(name)
        wake = self._feed.listen(order_id)
        try:
            order = await self.get(name)
            yield order
            while not order.state.terminal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._poll_interval)
                wake.clear()
                if self._feed.closed:
                    raise FeedClosed
                latest = await self.get(name)
                if latest.version != order.version:
                    order = latest
                    yield order
        finally:
            self._feed.unlisten(order_id, wake)


def order_id_of(name: str) -> str:
    return resource_id(name, "orders/{order}")


def _product_id(name: str, index: int) -> str:
    return resource_id(name, "products/{product}", f"order.lines[{index}].product")
