"""What inventory needs from storage; adapters/sql_repository.py implements it. Every write
returns the stock levels it changed, so the service can tell connected scanners."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.inventory.domain.model import Line, Reservation, StockLevel


@dataclass(frozen=True)
class ReserveRequest:
    reservation_id: str
    lines: tuple[Line, ...]
    request_id: str
    fingerprint: str
    expire_time: datetime


class InventoryRepository(Protocol):
    async def level(self, item_id: str) -> StockLevel | None: ...

    async def levels(self, offset: int, limit: int) -> tuple[list[StockLevel], int]: ...

    async def reservations(self, offset: int, limit: int) -> tuple[list[Reservation], int]:
        """Reservations, oldest first, and how many there are."""
        ...

    async def reserve(self, request: ReserveRequest) -> tuple[Reservation, list[StockLevel]]:
        """All lines or none; raises FAILED_PRECONDITION INSUFFICIENT_STOCK. A known request_id
        returns its first reservation (and no changed levels)."""
        ...

    async def commit(self, reservation_id: str) -> tuple[Reservation, list[StockLevel]]: ...

    async def release(self, reservation_id: str) -> tuple[Reservation, list[StockLevel]]: ...

    async def expire_due(self, now: datetime) -> list[StockLevel]:
        """Expires pending reservations whose time has come; returns the levels that changed."""
        ...

    async def adjust(self, item_id: str, delta: int) -> StockLevel: ...
