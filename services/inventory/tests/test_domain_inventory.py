"""Inventory's rules on an in-memory repository (tests/fakes.py): no database, no server."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from libs.runtime.errors import DomainError, ErrorKind
from services.inventory.domain.inventory import Inventory
from services.inventory.domain.level_feed import LevelFeed
from services.inventory.domain.model import ReservationState
from services.inventory.tests.fakes import NOW, InMemoryInventory


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def repository(clock: Clock) -> InMemoryInventory:
    return InMemoryInventory(clock)


@pytest.fixture
async def inventory(repository: InMemoryInventory, clock: Clock) -> Inventory:
    inventory = Inventory(repository, LevelFeed(), default_ttl=timedelta(minutes=15), clock=clock)
    await inventory.adjust("inventory/items/mug", 5, None)
    await inventory.adjust("inventory/items/tea", 1, None)
    return inventory


async def test_an_item_twice_in_one_reservation_is_refused(
    inventory: Inventory, repository: InMemoryInventory
) -> None:
    lines = [("inventory/items/mug", 1), ("inventory/items/tea", 1), ("inventory/items/mug", 1)]
    with pytest.raises(DomainError) as raised:
        await inventory.reserve(lines, "r1", "fp", None)
    assert raised.value.kind is ErrorKind.INVALID_ARGUMENT
    assert raised.value.reason == "DUPLICATE_ITEM"
    assert repository.held == {}


async def test_a_reservation_holds_all_lines_or_none(
    inventory: Inventory, repository: InMemoryInventory
) -> None:
    with pytest.raises(DomainError) as raised:
        await inventory.reserve(
            [("inventory/items/mug", 2), ("inventory/items/tea", 2)], "r1", "fp", None
        )
    assert raised.value.reason == "INSUFFICIENT_STOCK"
    assert (await inventory.level("inventory/items/mug")).available == 5


async def test_a_hold_expires_after_its_ttl_and_gives_the_stock_back(
    inventory: Inventory, clock: Clock
) -> None:
    held = await inventory.reserve([("inventory/items/mug", 2)], "r1", "fp", timedelta(minutes=1))
    assert held.expire_time == NOW + timedelta(minutes=1)
    assert (await inventory.level("inventory/items/mug")).available == 3
    clock.now += timedelta(minutes=2)
    assert await inventory.expire_due() == 1
    assert (await inventory.level("inventory/items/mug")).available == 5
    with pytest.raises(DomainError) as raised:
        await inventory.commit(held.name)
    assert raised.value.reason == "RESERVATION_NOT_PENDING"


async def test_a_commit_sells_the_held_units(inventory: Inventory) -> None:
    held = await inventory.reserve([("inventory/items/mug", 2)], "r1", "fp", None)
    committed = await inventory.commit(held.name)
    assert committed.state is ReservationState.COMMITTED
    level = await inventory.level("inventory/items/mug")
    assert (level.on_hand, level.reserved) == (3, 0)


@pytest.mark.parametrize("name", ["mug", "inventory/items/", "inventory/items/a/b"])
async def test_a_malformed_item_name_is_an_invalid_resource_name(
    inventory: Inventory, name: str
) -> None:
    with pytest.raises(DomainError) as raised:
        await inventory.level(name)
    assert raised.value.reason == "INVALID_RESOURCE_NAME"
