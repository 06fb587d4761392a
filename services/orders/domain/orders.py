"""Order use cases: the order saga.

An order is a process manager. Each step is one guarded change of the stored order (it must
still be at the version it was read in) together with the messages it causes, in one
transaction; a race between two steps (a cancel and a confirmation, two replicas' sweepers)
has exactly one winner, and the loser reads the order again.

    CreateOrder -> PENDING_PAYMENT (+ AuthorizePayment)
    PaymentAuthorized -> AUTHORIZED -> commit the stock (re-reserve if the hold lapsed)
        -> CONFIRMED (+ CapturePayment), or, if the stock is gone, CANCELLING (+ VoidPayment)
    cancel / payment deadline passed -> CANCELLING (+ VoidPayment), stock released
    PaymentVoided / PaymentRefunded / PaymentDeclined -> CANCELLED, stock released

No order stays non-terminal: PENDING_PAYMENT ends by its payment deadline (the sweeper),
AUTHORIZED and CANCELLING orders that stall (a step's message dead-lettered, a service down)
are taken up again by the sweeper every `stalled_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from libs.runtime.errors import DomainError, ErrorKind, FieldViolation, invalid_argument, not_found
from libs.runtime.pagination import page_request
from libs.runtime.resource_names import resource_id
from libs.runtime.shutdown import StreamsClosed
from services.orders.domain.model import (
    MessageKind,
    Order,
    OrderLine,
    OrderMessage,
    OrderState,
    PaymentState,
)
from services.orders.domain.order_feed import OrderFeed
from services.orders.domain.ports import (
    HoldLapsed,
    OrderRepository,
    ProductCatalog,
    StockReservations,
)
from services.orders.domain.reasons import Reason

log = logging.getLogger("emporium.orders")
# Re-reservations get request ids derived from the order and the lapsed hold, so a retry
# after a crash finds the same new hold.
_REHOLD = uuid.UUID("6f1c2a3e-4b5d-4e6f-8a9b-0c1d2e3f4a5b")
_RACE_ROUNDS = 5


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SagaTimes:
    """How long each wait of the saga may last."""

    reservation_ttl: timedelta = timedelta(minutes=15)
    payment_deadline: timedelta = timedelta(minutes=10)
    stalled_after: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if self.payment_deadline >= self.reservation_ttl:
            raise ValueError(
                f"the payment deadline ({self.payment_deadline}) must be shorter than the"
                f" reservation ttl ({self.reservation_ttl}), so a hold outlives the payment"
            )


class Orders:
    def __init__(
        self,
        repository: OrderRepository,
        catalog: ProductCatalog,
        stock: StockReservations,
        feed: OrderFeed,
        *,
        times: SagaTimes | None = None,
        poll_interval: float = 1.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._repository = repository
        self._catalog = catalog
        self._stock = stock
        self._feed = feed
        self._times = times or SagaTimes()
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
                    Reason.REQUEST_ID_REUSED,
                    "request_id was already used for a different order",
                    [
                        FieldViolation(
                            "request_id",
                            "was already used for a different order",
                            Reason.REQUEST_ID_REUSED,
                        )
                    ],
                )
            return order
        product_ids = [_product_id(product, i) for i, (product, _) in enumerate(lines)]
        repeated = sorted({p for p in product_ids if product_ids.count(p) > 1})
        if repeated:
            raise invalid_argument(
                Reason.DUPLICATE_PRODUCT,
                f"each product may appear once: {', '.join(repeated)}",
                [
                    FieldViolation(
                        "order.lines",
                        f"products/{p} appears more than once",
                        Reason.DUPLICATE_PRODUCT,
                    )
                    for p in repeated
                ],
            )
        products = await self._catalog.products(product_ids)
        currencies = {info.price.currency_code for info in products.values()}
        if len(currencies) > 1:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.MIXED_CURRENCIES,
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
            self._times.reservation_ttl,
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
            payment_deadline=now + self._times.payment_deadline,
        )
        if not _paid_for(order):  # nothing to pay: as good as authorized
            order = dataclasses.replace(order, state=OrderState.AUTHORIZED, payment_deadline=None)
        kinds = [MessageKind.ORDER_CREATED]
        if _paid_for(order):
            kinds.append(MessageKind.AUTHORIZE_PAYMENT)
        stored = await self._repository.create(
            order, request_id, fingerprint, _messages(order, *kinds)
        )
        self._feed.changed(stored.order_id)
        if stored.state is OrderState.AUTHORIZED and stored.version == 1:
            return await self._confirm(stored, "") or await self.get(stored.name)
        return stored

    async def get(self, name: str) -> Order:
        order = await self._repository.get(order_id_of(name))
        if order is None:
            raise not_found(name, Reason.ORDER_NOT_FOUND)
        return order

    async def list(self, customer: str, page_size: int, page_token: str) -> tuple[list[Order], str]:
        page = page_request(page_size, page_token, customer)
        orders, total = await self._repository.list(customer, page.offset, page.limit)
        return orders, page.next_token(len(orders), total)

    async def cancel(self, name: str, reason: str) -> Order:
        """The customer's cancel: wins only while the payment is not authorized."""
        for _ in range(_RACE_ROUNDS):
            order = await self.get(name)
            if order.state in (OrderState.CANCELLING, OrderState.CANCELLED):
                return order
            if order.state in (OrderState.AUTHORIZED, OrderState.CONFIRMED):
                raise DomainError(
                    ErrorKind.FAILED_PRECONDITION,
                    Reason.ORDER_CONFIRMED,
                    f"{name} is paid and confirmed (or being confirmed); it can no longer be"
                    " cancelled",
                    {"order": name, "state": order.state.value},
                )
            cancelling = await self._start_cancel(order, reason or "cancelled by request")
            if cancelling is not None:
                return cancelling
        raise _still_racing(name)

    async def _start_cancel(self, order: Order, reason: str, handled: str = "") -> Order | None:
        """CANCELLING (+ VoidPayment), then the stock goes back; None if the order changed."""
        if not _paid_for(order):  # no payment to void: release and cancel at once
            await self._stock.release(order.reservation)
            cancelled = self._next(order, OrderState.CANCELLED, cancel_reason=reason)
            saved = await self._save(order, cancelled, [MessageKind.ORDER_CANCELLED], handled)
            return cancelled if saved else None
        cancelling = self._next(order, OrderState.CANCELLING, cancel_reason=reason)
        if not await self._save(order, cancelling, [MessageKind.VOID_PAYMENT], handled):
            return None
        await self._release(cancelling)
        return cancelling

    async def payment_authorized(self, name: str, message_id: str) -> Order:
        """Authorized: commit the stock and confirm, unless a cancel won first (its void
        lets the authorization go)."""
        for _ in range(_RACE_ROUNDS):
            order = await self.get(name)
            if order.state is OrderState.PENDING_PAYMENT:
                authorized = self._next(
                    order, OrderState.AUTHORIZED, payment_state=PaymentState.AUTHORIZED
                )
                if not await self._save(order, authorized, []):
                    continue
                order = authorized
            if order.state is not OrderState.AUTHORIZED:
                return order  # confirmed already, or cancelled: the void is on its way
            confirmed = await self._confirm(order, message_id)
            if confirmed is not None:
                return confirmed
        raise _still_racing(name)

    async def _confirm(self, order: Order, handled: str) -> Order | None:
        reservation = order.reservation
        try:
            await self._stock.commit(reservation)
        except HoldLapsed:
            try:
                reservation = await self._rehold(order)
                await self._stock.commit(reservation)
            except DomainError as error:
                if error.reason != "INSUFFICIENT_STOCK":
                    raise
                log.warning("the hold lapsed and the stock is gone", extra={"order": order.name})
                return await self._start_cancel(order, "the stock is gone", handled)
        confirmed = self._next(order, OrderState.CONFIRMED, reservation=reservation)
        kinds = [MessageKind.ORDER_CONFIRMED]
        if _paid_for(order):
            kinds.append(MessageKind.CAPTURE_PAYMENT)
        if not await self._save(order, confirmed, kinds, handled):
            return None
        return confirmed

    async def _rehold(self, order: Order) -> str:
        request_id = str(uuid.uuid5(_REHOLD, f"{order.order_id}/{order.reservation}"))
        return await self._stock.reserve(
            [(line.product_id, line.quantity) for line in order.lines],
            request_id,
            self._times.reservation_ttl,
        )

    async def payment_captured(self, name: str, message_id: str) -> Order:
        return await self._record_payment(name, PaymentState.CAPTURED, message_id)

    async def payment_declined(self, name: str, reason: str, message_id: str) -> Order:
        return await self._payment_ended(
            name, PaymentState.DECLINED, f"payment declined: {reason}", message_id
        )

    async def payment_voided(self, name: str, message_id: str) -> Order:
        return await self._payment_ended(name, PaymentState.VOIDED, "payment voided", message_id)

    async def payment_refunded(self, name: str, message_id: str) -> Order:
        return await self._payment_ended(
            name, PaymentState.REFUNDED, "payment refunded", message_id
        )

    async def _payment_ended(
        self, name: str, payment: PaymentState, reason: str, message_id: str
    ) -> Order:
        """The payment will move no money (any more): release the stock, cancel the order."""
        for _ in range(_RACE_ROUNDS):
            order = await self.get(name)
            if order.state is OrderState.CANCELLED:
                return order
            if order.state is OrderState.CONFIRMED:
                log.error(
                    "the payment of a confirmed order ended without its money",
                    extra={"order": name, "payment_state": payment.value},
                )
                return order
            await self._stock.release(order.reservation)
            cancelled = self._next(
                order,
                OrderState.CANCELLED,
                payment_state=payment,
                cancel_reason=order.cancel_reason or reason,
            )
            if await self._save(order, cancelled, [MessageKind.ORDER_CANCELLED], message_id):
                return cancelled
        raise _still_racing(name)

    async def _record_payment(self, name: str, payment: PaymentState, message_id: str) -> Order:
        for _ in range(_RACE_ROUNDS):
            order = await self.get(name)
            if order.payment_state is payment:
                return order
            if order.state is not OrderState.CONFIRMED:
                log.error(
                    "payment captured for an order that is not confirmed",
                    extra={"order": name, "state": order.state.value},
                )
                return order
            recorded = self._next(order, order.state, payment_state=payment)
            if await self._save(order, recorded, [], message_id):
                return recorded
        raise _still_racing(name)

    async def sweep(self, limit: int = 100) -> int:
        """Moves the orders that wait too long: PENDING_PAYMENT past the payment deadline
        are cancelled; stalled AUTHORIZED orders are confirmed again, stalled CANCELLING ones
        ask for the void again, CONFIRMED ones whose capture is not heard of for the capture.
        Safe with several replicas (every step is guarded). Returns how many orders it moved."""
        moved = 0
        now = self._clock()
        for order in await self._repository.due(now, self._times.stalled_after, limit):
            try:
                done = await self._sweep_one(order)
            except Exception:  # an upstream may be down: the next round tries again
                log.warning("could not sweep the order yet", extra={"order": order.name})
                continue
            if done is not None:
                moved += 1
                log.info("order swept", extra={"order": order.name, "state": done.state.value})
        return moved

    async def _sweep_one(self, order: Order) -> Order | None:
        if order.state is OrderState.PENDING_PAYMENT:
            return await self._start_cancel(order, "payment deadline passed")
        if order.state is OrderState.AUTHORIZED:
            return await self._confirm(order, "")
        again = self._next(order, order.state)
        if order.state is OrderState.CONFIRMED:  # not captured yet: ask for the capture again
            return again if await self._save(order, again, [MessageKind.CAPTURE_PAYMENT]) else None
        if not await self._save(order, again, [MessageKind.VOID_PAYMENT]):  # CANCELLING
            return None
        await self._release(again)
        return again

    def _next(self, order: Order, state: OrderState, **changes: object) -> Order:
        return dataclasses.replace(
            order,
            state=state,
            version=order.version + 1,
            update_time=self._clock(),
            **changes,  # type: ignore[arg-type]
        )

    async def _save(
        self, read: Order, changed: Order, kinds: Sequence[MessageKind], handled: str = ""
    ) -> bool:
        saved = await self._repository.save(read, changed, _messages(changed, *kinds), handled)
        if saved:
            self._feed.changed(changed.order_id)
        return saved

    async def _release(self, order: Order) -> None:
        # Best effort: the hold also lapses by itself, and the void's answer releases again.
        try:
            await self._stock.release(order.reservation)
        except Exception:
            log.warning("could not release the stock yet", extra={"order": order.name})

    async def watch(self, name: str, after: int | None = None) -> AsyncIterator[Order]:
        """The order now (or, `after` a version the caller saw, every version since), then
        every version after it, in order (each state it passed through, even when another
        replica made the changes between two looks), until it is settled: terminal, and a
        confirmed order's payment captured (StreamsClosed at shutdown)."""
        order_id = order_id_of(name)
        wake = self._feed.listen(order_id)
        try:
            order = await self.get(name)
            if after is None or after > order.version:
                yield order
            else:
                for later in await self._repository.versions(order_id, after):
                    order = later
                    yield order
            while not order.settled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._poll_interval)
                wake.clear()
                if self._feed.closed:
                    raise StreamsClosed("watch again")
                for later in await self._repository.versions(order_id, order.version):
                    order = later
                    yield order
        finally:
            self._feed.unlisten(order_id, wake)


def order_id_of(name: str) -> str:
    return resource_id(name, "orders/{order}")


def _product_id(name: str, index: int) -> str:
    return resource_id(name, "products/{product}", f"order.lines[{index}].product")


def _paid_for(order: Order) -> bool:
    """False for an order of free products: it has no payment to authorize, capture or void."""
    return order.total.total_nanos > 0


def _messages(order: Order, *kinds: MessageKind) -> list[OrderMessage]:
    return [OrderMessage(kind, order) for kind in kinds]


def _still_racing(name: str) -> DomainError:
    return DomainError(
        ErrorKind.ABORTED, Reason.CONCURRENT_MODIFICATION, f"{name} keeps changing; try again"
    )
