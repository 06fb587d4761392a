"""An in-memory fake of inventory's repository port, for domain unit tests (no database)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

from libs.runtime.errors import DomainError, ErrorKind
from services.inventory.domain.model import Line, Reservation, ReservationState, StockLevel
from services.inventory.domain.ports import ReserveRequest

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class InMemoryInventory:
    """Keeps the SQL repository's promises: all lines or none, request_id idempotency, a hold
    past its time expires when it is next touched, settled reservations stay settled."""

    def __init__(self, clock: Callable[[], datetime] = lambda: NOW) -> None:
        self.stock: dict[str, StockLevel] = {}
        self.held: dict[str, Reservation] = {}
        self.by_request: dict[str, str] = {}
        self._clock = clock

    async def level(self, item_id: str) -> StockLevel | None:
        return self.stock.get(item_id)

    async def levels(self, offset: int, limit: int) -> tuple[list[StockLevel], int]:
        found = sorted(self.stock.values(), key=lambda level: level.item_id)
        return found[offset : offset + limit], len(found)

    async def reservations(self, offset: int, limit: int) -> tuple[list[Reservation], int]:
        found = sorted(self.held.values(), key=lambda r: r.create_time)
        return found[offset : offset + limit], len(found)

    async def reserve(self, request: ReserveRequest) -> tuple[Reservation, list[StockLevel]]:
        if request.request_id in self.by_request:
            return self.held[self.by_request[request.request_id]], []
        for line in request.lines:
            level = self.stock.get(line.item_id)
            available = level.available if level else 0
            if line.quantity > available:
                raise DomainError(
                    ErrorKind.FAILED_PRECONDITION,
                    "INSUFFICIENT_STOCK",
                    f"inventory/items/{line.item_id}: {line.quantity} requested, "
                    f"{available} available",
                )
        reservation = Reservation(
            request.reservation_id,
            request.lines,
            ReservationState.PENDING,
            request.expire_time,
            self._clock(),
        )
        self.held[reservation.reservation_id] = reservation
        self.by_request[request.request_id] = reservation.reservation_id
        return reservation, self._move(request.lines, reserved=+1)

    async def commit(self, reservation_id: str) -> tuple[Reservation, list[StockLevel]]:
        return self._settle(reservation_id, ReservationState.COMMITTED)

    async def release(self, reservation_id: str) -> tuple[Reservation, list[StockLevel]]:
        return self._settle(reservation_id, ReservationState.RELEASED)

    async def expire_due(self, now: datetime) -> list[StockLevel]:
        changed: list[StockLevel] = []
        for reservation in list(self.held.values()):
            if reservation.state is ReservationState.PENDING and reservation.expire_time <= now:
                changed += self._end(reservation, ReservationState.EXPIRED)
        return changed

    async def adjust(self, item_id: str, delta: int) -> StockLevel:
        level = self.stock.get(item_id)
        if level is None:
            if delta < 0:
                raise DomainError(
                    ErrorKind.FAILED_PRECONDITION, "ITEM_NOT_STOCKED", f"{item_id} has none"
                )
            level = StockLevel(item_id, 0, 0, self._clock())
        if level.on_hand + delta < level.reserved:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION, "STOCK_BELOW_RESERVED", f"{item_id} is held"
            )
        self.stock[item_id] = dataclasses.replace(level, on_hand=level.on_hand + delta)
        return self.stock[item_id]

    def _settle(
        self, reservation_id: str, target: ReservationState
    ) -> tuple[Reservation, list[StockLevel]]:
        reservation = self.held.get(reservation_id)
        if reservation is None:
            raise DomainError(
                ErrorKind.NOT_FOUND, "RESERVATION_NOT_FOUND", f"{reservation_id} not found"
            )
        changed: list[StockLevel] = []
        if reservation.state is ReservationState.PENDING:
            if reservation.expire_time <= self._clock():
                changed = self._end(reservation, ReservationState.EXPIRED)
            else:
                changed = self._end(reservation, target)
        reservation = self.held[reservation_id]
        done = reservation.state is target or (
            target is ReservationState.RELEASED and reservation.state is ReservationState.EXPIRED
        )
        if not done:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                "RESERVATION_NOT_PENDING",
                f"{reservation.name} is {reservation.state.value.lower()}",
            )
        return reservation, changed

    def _end(self, reservation: Reservation, state: ReservationState) -> list[StockLevel]:
        self.held[reservation.reservation_id] = dataclasses.replace(reservation, state=state)
        sold = state is ReservationState.COMMITTED
        return self._move(reservation.lines, reserved=-1, on_hand=-1 if sold else 0)

    def _move(
        self, lines: tuple[Line, ...], *, reserved: int, on_hand: int = 0
    ) -> list[StockLevel]:
        changed = []
        for line in lines:
            level = self.stock[line.item_id]
            level = dataclasses.replace(
                level,
                reserved=level.reserved + reserved * line.quantity,
                on_hand=level.on_hand + on_hand * line.quantity,
            )
            self.stock[line.item_id] = level
            changed.append(level)
        return changed
