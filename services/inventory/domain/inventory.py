"""Inventory use cases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from libs.runtime.errors import FieldViolation, invalid_argument, not_found
from libs.runtime.pagination import page_request
from libs.runtime.resource_names import resource_id
from services.inventory.domain.level_feed import LevelFeed
from services.inventory.domain.model import (
    ITEM_PREFIX,
    RESERVATION_PREFIX,
    Line,
    Reservation,
    StockLevel,
)
from services.inventory.domain.ports import InventoryRepository, ReserveRequest
from services.inventory.domain.reasons import Reason


def _now() -> datetime:
    return datetime.now(UTC)


class Inventory:
    def __init__(
        self,
        repository: InventoryRepository,
        feed: LevelFeed,
        *,
        default_ttl: timedelta = timedelta(minutes=15),
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._repository = repository
        self.feed = feed
        self._default_ttl = default_ttl
        self._clock = clock

    async def level(self, name: str) -> StockLevel:
        level = await self._repository.level(id_of(name, ITEM_PREFIX, "name"))
        if level is None:
            raise not_found(name, Reason.ITEM_NOT_FOUND)
        return level

    async def levels(self, page_size: int, page_token: str) -> tuple[list[StockLevel], str]:
        page = page_request(page_size, page_token)
        levels, total = await self._repository.levels(page.offset, page.limit)
        return levels, page.next_token(len(levels), total)

    async def reservations(self, page_size: int, page_token: str) -> tuple[list[Reservation], str]:
        page = page_request(page_size, page_token)
        found, total = await self._repository.reservations(page.offset, page.limit)
        return found, page.next_token(len(found), total)

    async def reserve(
        self,
        lines: Sequence[tuple[str, int]],
        request_id: str,
        fingerprint: str,
        ttl: timedelta | None,
    ) -> Reservation:
        items = [id_of(item, ITEM_PREFIX, f"lines[{i}].item") for i, (item, _) in enumerate(lines)]
        repeated = sorted({item for item in items if items.count(item) > 1})
        if repeated:
            raise invalid_argument(
                Reason.DUPLICATE_ITEM,
                f"each item may appear once: {', '.join(repeated)}",
                [
                    FieldViolation(
                        "lines",
                        f"{ITEM_PREFIX}{item} appears more than once",
                        Reason.DUPLICATE_ITEM,
                    )
                    for item in repeated
                ],
            )
        request = ReserveRequest(
            reservation_id=uuid.uuid4().hex,
            lines=tuple(
                Line(item, quantity) for item, (_, quantity) in zip(items, lines, strict=True)
            ),
            request_id=request_id,
            fingerprint=fingerprint,
            expire_time=self._clock() + (ttl or self._default_ttl),
        )
        reservation, changed = await self._repository.reserve(request)
        self.feed.publish(changed)
        return reservation

    async def commit(self, name: str) -> Reservation:
        reservation, changed = await self._repository.commit(
            id_of(name, RESERVATION_PREFIX, "name")
        )
        self.feed.publish(changed)
        return reservation

    async def release(self, name: str) -> Reservation:
        reservation, changed = await self._repository.release(
            id_of(name, RESERVATION_PREFIX, "name")
        )
        self.feed.publish(changed)
        return reservation

    async def expire_due(self) -> int:
        changed = await self._repository.expire_due(self._clock())
        self.feed.publish(changed)
        return len(changed)

    async def adjust(self, item: str, delta: int, source: object) -> StockLevel:
        level = await self._repository.adjust(id_of(item, ITEM_PREFIX, "item"), delta)
        self.feed.publish([level], source)
        return level


def id_of(name: str, prefix: str, field_path: str) -> str:
    return resource_id(name, prefix + "{id}", field_path)
