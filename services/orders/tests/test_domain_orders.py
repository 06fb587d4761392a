"""CreateOrder's rules on in-memory fakes (tests/fakes.py): what the saga tests do not cover,
without catalog, inventory, a broker or a database."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from services.orders.domain.order_feed import OrderFeed
from services.orders.domain.orders import Orders, SagaTimes
from services.orders.tests.fakes import Clock, FakeCatalog, FakeRepository, FakeStock

TIMES = SagaTimes(
    reservation_ttl=timedelta(minutes=15),
    payment_deadline=timedelta(minutes=10),
    stalled_after=timedelta(seconds=30),
)


@pytest.fixture
def stock() -> FakeStock:
    return FakeStock()


@pytest.fixture
def repository() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
def catalog() -> FakeCatalog:
    return FakeCatalog()


@pytest.fixture
def orders(repository: FakeRepository, catalog: FakeCatalog, stock: FakeStock) -> Orders:
    return Orders(repository, catalog, stock, OrderFeed(), times=TIMES, clock=Clock())


async def test_a_product_twice_in_one_order_is_refused_before_anything_is_held(
    orders: Orders, repository: FakeRepository, stock: FakeStock
) -> None:
    with pytest.raises(DomainError) as raised:
        await orders.create(
            "customers/ann",
            [("products/mug", 1), ("products/tea", 1), ("products/mug", 2)],
            str(uuid.uuid4()),
            "fp",
        )
    assert raised.value.kind is ErrorKind.INVALID_ARGUMENT
    assert raised.value.reason == "DUPLICATE_PRODUCT"
    assert [v.description for v in raised.value.violations] == [
        "products/mug appears more than once"
    ]
    assert stock.holds == {} and repository.orders == {}


async def test_a_request_id_reused_for_another_order_is_refused(orders: Orders) -> None:
    request_id = str(uuid.uuid4())
    await orders.create("customers/ann", [("products/mug", 1)], request_id, "fp-1")
    with pytest.raises(DomainError) as raised:
        await orders.create("customers/ann", [("products/tea", 1)], request_id, "fp-2")
    assert raised.value.reason == "REQUEST_ID_REUSED"


async def test_products_priced_in_two_currencies_cannot_share_an_order(
    orders: Orders, catalog: FakeCatalog, stock: FakeStock
) -> None:
    catalog.prices["tea"] = Money("USD", 4, 0)
    with pytest.raises(DomainError) as raised:
        await orders.create(
            "customers/ann", [("products/mug", 1), ("products/tea", 1)], str(uuid.uuid4()), "fp"
        )
    assert raised.value.reason == "MIXED_CURRENCIES"
    assert stock.holds == {}
