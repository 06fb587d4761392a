"""Payments' rules with in-memory fakes of its ports (provider, storage, orders): commands in
any order, races between workers, and the reconciler. Milliseconds per test."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from services.payments.domain.model import (
    PaymentRequest,
    PaymentState,
    ProviderRecord,
    ProviderStatus,
)
from services.payments.domain.payments import Payments
from services.payments.tests.fakes import NOW, FakeOrders, FakeProvider, FakeRepository

EUR_12 = Money("EUR", 12, 0)
REQUEST = PaymentRequest("orders/o1", "customers/ada", EUR_12, "cards/visa")


@dataclasses.dataclass
class World:
    payments: Payments
    provider: FakeProvider
    repository: FakeRepository
    orders: FakeOrders


@pytest.fixture
def world() -> World:
    provider, repository, orders = FakeProvider(), FakeRepository(), FakeOrders()
    clock = lambda: NOW + timedelta(minutes=5)  # noqa: E731
    return World(Payments(repository, provider, orders, clock=clock), provider, repository, orders)


async def test_authorize_then_capture_moves_the_money_once(world: World) -> None:
    authorized = await world.payments.authorize(REQUEST, "m1")
    again = await world.payments.authorize(REQUEST, "m1")  # redelivered
    captured = await world.payments.capture("orders/o1", "m2")
    assert (authorized.state, again.state, captured.state) == (
        PaymentState.AUTHORIZED,
        PaymentState.AUTHORIZED,
        PaymentState.CAPTURED,
    )
    assert world.provider.calls.count("authorize o1") == 1
    assert world.provider.known["o1"].status is ProviderStatus.CAPTURED


async def test_a_void_before_the_authorize_keeps_the_authorize_from_the_provider(
    world: World,
) -> None:
    voided = await world.payments.void(REQUEST, "cancelled", "m1")
    late = await world.payments.authorize(REQUEST, "m2")
    assert voided.state is late.state is PaymentState.VOIDED
    assert world.provider.calls == []
    assert world.repository.events == [("o1", PaymentState.VOIDED)] * 2  # answered again


async def test_a_void_during_the_authorization_lets_the_late_authorization_go(
    world: World,
) -> None:
    async def void_meanwhile() -> None:
        await world.payments.void(REQUEST, "cancelled", "m2")

    world.provider.during_authorize = void_meanwhile
    after = await world.payments.authorize(REQUEST, "m1")
    assert after.state is PaymentState.VOIDED
    assert world.provider.known["o1"].status is ProviderStatus.VOIDED


async def test_a_redelivery_lets_go_of_what_a_dead_worker_left_held(world: World) -> None:
    """A worker asked the provider and died; a void came before the provider answered (so it
    found nothing to void); the redelivered authorize finds the authorization and voids it."""
    payment, _ = await world.repository.open(REQUEST, PaymentState.PENDING)
    await world.repository.attempt(payment)
    await world.payments.void(REQUEST, "cancelled", "m1")  # the provider knows nothing yet
    world.provider.known["o1"] = ProviderRecord("o1", ProviderStatus.AUTHORIZED, EUR_12, "r")
    after = await world.payments.authorize(REQUEST, "m2")  # the dead worker's message, again
    assert after.state is PaymentState.VOIDED
    assert world.provider.known["o1"].status is ProviderStatus.VOIDED
    assert "authorize o1" not in world.provider.calls


async def test_a_retry_after_an_unknown_outcome_asks_the_provider_first(world: World) -> None:
    await world.repository.open(REQUEST, PaymentState.PENDING)
    await world.repository.attempt(world.repository.payments["o1"])  # a worker died here...
    world.provider.known["o1"] = ProviderRecord("o1", ProviderStatus.AUTHORIZED, EUR_12, "r")
    settled = await world.payments.authorize(REQUEST, "m1")  # ...after the provider acted
    assert settled.state is PaymentState.AUTHORIZED
    assert world.provider.calls == ["outcome o1"]  # no second authorization


async def test_bad_or_forged_authorizations_never_reach_the_provider(world: World) -> None:
    with pytest.raises(DomainError) as negative:
        await world.payments.authorize(
            dataclasses.replace(REQUEST, amount=Money("EUR", -50, 0)), "m1"
        )
    assert negative.value.reason == "INVALID_AMOUNT"
    with pytest.raises(DomainError) as unknown:
        await world.payments.authorize(dataclasses.replace(REQUEST, order="orders/nope"), "m2")
    assert unknown.value.kind is ErrorKind.NOT_FOUND
    world.orders.payable_orders["orders/o1"] = False  # cancelled meanwhile
    ended = await world.payments.authorize(REQUEST, "m3")
    assert ended.state is PaymentState.VOIDED
    with pytest.raises(DomainError) as forged:
        await world.payments.authorize(dataclasses.replace(REQUEST, amount=EUR_12.times(9)), "m4")
    assert forged.value.reason == "NOT_THE_ORDERS_PAYMENT"
    assert world.provider.calls == []


async def test_a_void_refunds_a_capture_and_a_capture_needs_an_authorization(
    world: World,
) -> None:
    await world.payments.authorize(REQUEST, "m1")
    await world.payments.capture("orders/o1", "m2")
    refunded = await world.payments.void(REQUEST, "returned", "m3")
    assert refunded.state is PaymentState.REFUNDED
    assert world.provider.known["o1"].status is ProviderStatus.REFUNDED
    assert (await world.payments.capture("orders/o1", "m4")).state is PaymentState.REFUNDED
    voided = dataclasses.replace(REQUEST, order="orders/o2")
    await world.payments.void(voided, "cancelled", "m5")
    with pytest.raises(DomainError) as refused:
        await world.payments.capture("orders/o2", "m6")
    assert refused.value.reason == "PAYMENT_NOT_CAPTURABLE"
    assert "capture o2" not in world.provider.calls


async def test_the_reconciler_settles_what_was_left_pending(world: World) -> None:
    known = dataclasses.replace(REQUEST, order="orders/o2")
    unknown = dataclasses.replace(REQUEST, order="orders/o3")
    for request in (known, unknown):
        payment, _ = await world.repository.open(request, PaymentState.PENDING)
        await world.repository.attempt(payment)
    world.provider.known["o2"] = ProviderRecord("o2", ProviderStatus.AUTHORIZED, EUR_12, "r")
    assert await world.payments.reconcile(timedelta(minutes=2)) == 2
    assert world.repository.payments["o2"].state is PaymentState.AUTHORIZED
    assert world.repository.payments["o3"].state is PaymentState.DECLINED
