"""Inventory entities."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

ITEM_PREFIX = "inventory/items/"
RESERVATION_PREFIX = "inventory/reservations/"


@dataclass(frozen=True)
class StockLevel:
    item_id: str
    on_hand: int
    reserved: int
    update_time: datetime

    @property
    def name(self) -> str:
        return ITEM_PREFIX + self.item_id

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class ReservationState(enum.Enum):
    PENDING = "PENDING"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class Line:
    item_id: str
    quantity: int


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    lines: tuple[Line, ...]
    state: ReservationState
    expire_time: datetime
    create_time: datetime

    @property
    def name(self) -> str:
        return RESERVATION_PREFIX + self.reservation_id
