"""The order saga's rules with in-memory fakes of its ports: no broker, no database, no
servers; milliseconds per test."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import pytest

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from services.orders.domain.model import (
    MessageKind,
    Order,
    OrderState,
    PaymentState,
)
from services.orders.domain.order_feed import OrderFeed
from services.orders.domain.orders import Orders, SagaTimes
from services.orders.tests.fakes import START, Clock, FakeCatalog, FakeRepository, FakeStock

TIMES = SagaTimes(
    reservation_ttl=timedelta(minutes=15),
    payment_deadline=timedelta(minutes=10),
    stalled_after=timedelta(seconds=30),
)


@dataclasses.dataclass
class Saga:
    orders: Orders
    repository: FakeRepository
    stock: FakeStock
    clock: Clock
    catalog: FakeCatalog

    async def create(self, quantity: int = 2) -> Order:
        return await self.orders.create(
            "customers/ann", [("products/mug", quantity)], str(uuid.uuid4()), "fp"
        )


@pytest.fixture
def saga() -> Saga:
    repository, stock, clock, catalog = FakeRepository(), FakeStock(), Clock(), FakeCatalog()
    orders = Orders(repository, catalog, stock, OrderFeed(), times=TIMES, clock=clock)
    return Saga(orders, repository, stock, clock, catalog)


async def test_a_new_order_holds_its_stock_for_the_ttl_and_asks_for_an_authorization(
    saga: Saga,
) -> None:
    order = await saga.create()
    assert order.state is OrderState.PENDING_PAYMENT
    assert order.payment_deadline == START + TIMES.payment_deadline
    assert saga.stock.ttls == [TIMES.reservation_ttl]
    assert saga.repository.kinds(order) == [
        MessageKind.ORDER_CREATED,
        MessageKind.AUTHORIZE_PAYMENT,
    ]


async def test_an_authorized_order_commits_its_stock_is_confirmed_and_captured(
    saga: Saga,
) -> None:
    order = await saga.create()
    confirmed = await saga.orders.payment_authorized(order.name, "m1")
    assert confirmed.state is OrderState.CONFIRMED
    assert confirmed.payment_state is PaymentState.AUTHORIZED
    assert saga.stock.holds[order.reservation][1] == "COMMITTED"
    assert saga.repository.kinds(order)[2:] == [
        MessageKind.ORDER_CONFIRMED,
        MessageKind.CAPTURE_PAYMENT,
    ]
    captured = await saga.orders.payment_captured(order.name, "m2")
    assert (captured.state, captured.payment_state) == (
        OrderState.CONFIRMED,
        PaymentState.CAPTURED,
    )
    # A redelivered authorization changes nothing.
    again = await saga.orders.payment_authorized(order.name, "m1")
    assert again == captured
    assert len(saga.repository.kinds(order)) == 4


async def test_a_cancel_voids_the_payment_releases_the_stock_then_cancels(saga: Saga) -> None:
    order = await saga.create()
    cancelling = await saga.orders.cancel(order.name, "changed my mind")
    assert cancelling.state is OrderState.CANCELLING
    assert saga.stock.available == 10
    assert saga.repository.kinds(order)[-1] is MessageKind.VOID_PAYMENT
    assert (await saga.orders.cancel(order.name, "again")).version == cancelling.version

    # The authorization that was under way comes back: the cancel won, nothing is committed.
    assert (await saga.orders.payment_authorized(order.name, "m1")).state is (OrderState.CANCELLING)
    cancelled = await saga.orders.payment_voided(order.name, "m2")
    assert (cancelled.state, cancelled.payment_state) == (
        OrderState.CANCELLED,
        PaymentState.VOIDED,
    )
    assert cancelled.cancel_reason == "changed my mind"
    assert saga.repository.kinds(order)[-1] is MessageKind.ORDER_CANCELLED


async def test_a_cancel_that_loses_to_the_confirmation_hears_order_confirmed(
    saga: Saga,
) -> None:
    order = await saga.create()
    read_before = await saga.orders.get(order.name)

    async def confirm_first() -> None:
        saga.repository.before_next_save = None
        await saga.orders.payment_authorized(order.name, "m1")

    # The cancel read the order PENDING_PAYMENT; the confirmation commits before its save.
    assert read_before.state is OrderState.PENDING_PAYMENT
    saga.repository.before_next_save = confirm_first
    with pytest.raises(DomainError) as lost:
        await saga.orders.cancel(order.name, "too late")
    assert (lost.value.kind, lost.value.reason) == (
        ErrorKind.FAILED_PRECONDITION,
        "ORDER_CONFIRMED",
    )
    confirmed = await saga.orders.get(order.name)
    assert confirmed.state is OrderState.CONFIRMED
    assert MessageKind.VOID_PAYMENT not in saga.repository.kinds(order)


async def test_a_confirmation_that_loses_to_the_cancel_leaves_the_stock_alone(
    saga: Saga,
) -> None:
    order = await saga.create()

    async def cancel_first() -> None:
        await saga.orders.cancel(order.name, "quick")

    saga.repository.before_next_save = cancel_first
    after = await saga.orders.payment_authorized(order.name, "m1")
    assert after.state is OrderState.CANCELLING
    assert saga.stock.holds[order.reservation][1] == "RELEASED"
    assert MessageKind.CAPTURE_PAYMENT not in saga.repository.kinds(order)


async def test_a_lapsed_hold_is_held_again_before_the_order_is_confirmed(saga: Saga) -> None:
    order = await saga.create()
    saga.stock.lapse(order.reservation)
    confirmed = await saga.orders.payment_authorized(order.name, "m1")
    assert confirmed.state is OrderState.CONFIRMED
    assert confirmed.reservation != order.reservation
    assert saga.stock.holds[confirmed.reservation][1] == "COMMITTED"
    assert saga.stock.available == 8


async def test_a_lapsed_hold_whose_stock_is_gone_cancels_and_voids(saga: Saga) -> None:
    order = await saga.create()
    saga.stock.lapse(order.reservation)
    await saga.create(quantity=10)  # someone else takes the stock meanwhile
    after = await saga.orders.payment_authorized(order.name, "m1")
    assert (after.state, after.cancel_reason) == (OrderState.CANCELLING, "the stock is gone")
    assert saga.repository.kinds(order)[-1] is MessageKind.VOID_PAYMENT
    cancelled = await saga.orders.payment_voided(order.name, "m2")
    assert cancelled.state is OrderState.CANCELLED


async def test_a_decline_cancels_and_releases(saga: Saga) -> None:
    order = await saga.create()
    cancelled = await saga.orders.payment_declined(order.name, "card declined", "m1")
    assert (cancelled.state, cancelled.payment_state, cancelled.cancel_reason) == (
        OrderState.CANCELLED,
        PaymentState.DECLINED,
        "payment declined: card declined",
    )
    assert saga.stock.available == 10


async def test_the_sweeper_ends_what_waits_too_long(saga: Saga) -> None:
    late = await saga.create(quantity=1)
    stalled = await saga.create(quantity=1)
    await saga.orders.cancel(stalled.name, "changed my mind")
    saga.clock.now = START + TIMES.payment_deadline - timedelta(seconds=1)
    assert await saga.orders.sweep() == 1  # only the CANCELLING one, stalled for 30 s
    assert saga.repository.kinds(stalled).count(MessageKind.VOID_PAYMENT) == 2

    saga.clock.now = START + TIMES.payment_deadline
    await saga.orders.sweep()
    swept = await saga.orders.get(late.name)
    assert (swept.state, swept.cancel_reason) == (
        OrderState.CANCELLING,
        "payment deadline passed",
    )
    assert saga.repository.kinds(late)[-1] is MessageKind.VOID_PAYMENT


async def test_the_sweeper_finishes_a_stalled_confirmation(saga: Saga) -> None:
    order = await saga.create()
    authorized = dataclasses.replace(order, state=OrderState.AUTHORIZED, version=order.version + 1)
    saga.repository.orders[order.order_id] = authorized  # a crash after AUTHORIZED
    saga.clock.now = START + TIMES.stalled_after
    assert await saga.orders.sweep() == 1
    assert (await saga.orders.get(order.name)).state is OrderState.CONFIRMED


async def test_a_free_order_is_confirmed_at_once_without_a_payment(saga: Saga) -> None:
    saga.catalog.price = Money("EUR", 0, 0)
    order = await saga.create()
    assert order.state is OrderState.CONFIRMED
    assert saga.stock.holds[order.reservation][1] == "COMMITTED"
    assert saga.repository.kinds(order) == [
        MessageKind.ORDER_CREATED,
        MessageKind.ORDER_CONFIRMED,
    ]


async def test_the_sweeper_asks_again_for_a_capture_not_heard_of(saga: Saga) -> None:
    order = await saga.create()
    await saga.orders.payment_authorized(order.name, "m1")
    saga.clock.now = START + TIMES.stalled_after
    assert await saga.orders.sweep() == 1
    assert saga.repository.kinds(order).count(MessageKind.CAPTURE_PAYMENT) == 2
    await saga.orders.payment_captured(order.name, "m2")
    saga.clock.now = START + 3 * TIMES.stalled_after
    assert await saga.orders.sweep() == 0


def test_the_payment_deadline_must_end_before_the_hold() -> None:
    with pytest.raises(ValueError, match="shorter than the reservation ttl"):
        SagaTimes(reservation_ttl=timedelta(minutes=5), payment_deadline=timedelta(minutes=5))


async def test_a_watch_resumed_after_a_version_replays_every_later_one_once(saga: Saga) -> None:
    order = await saga.create()
    await saga.orders.payment_authorized(order.name, "m1")  # AUTHORIZED, then CONFIRMED
    await saga.orders.payment_captured(order.name, "m2")
    everything = [o async for o in saga.orders.watch(order.name, after=0)]
    assert [o.version for o in everything] == [1, 2, 3, 4]
    assert [o.state for o in everything][:3] == [
        OrderState.PENDING_PAYMENT,
        OrderState.AUTHORIZED,
        OrderState.CONFIRMED,
    ]
    resumed = [o async for o in saga.orders.watch(order.name, after=2)]
    assert [o.version for o in resumed] == [3, 4]
    # A watch without a version starts from the order as it is now (terminal: just that).
    assert [o.version for o in [o async for o in saga.orders.watch(order.name)]] == [4]
