"""InventoryRepository on SQLAlchemy async core, the same SQL for SQLite and PostgreSQL.

No oversell: a line is reserved by one conditional UPDATE (`... WHERE on_hand - reserved >= q`),
so concurrent reservations cannot both take the last units, and a reservation that cannot take
every line rolls back whole.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.runtime.errors import DomainError, ErrorKind, invalid_field
from libs.storage.database import Database, creating_tables
from libs.storage.timestamps import from_micros, now_micros, to_micros
from services.inventory.domain.model import Line, Reservation, ReservationState, StockLevel
from services.inventory.domain.repository import ReserveRequest

metadata = sa.MetaData()
stock = sa.Table(
    "stock",
    metadata,
    sa.Column("item_id", sa.String(64), primary_key=True),
    sa.Column("on_hand", sa.BigInteger, nullable=False),
    sa.Column("reserved", sa.BigInteger, nullable=False),
    sa.Column("update_us", sa.BigInteger, nullable=False),
    sa.CheckConstraint("reserved >= 0 AND on_hand >= reserved", name="stock_never_oversold"),
)
reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("request_id", sa.String(64), nullable=False, unique=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("expire_us", sa.BigInteger, nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Index("ix_reservations_pending_expiry", "state", "expire_us"),
)
reservation_lines = sa.Table(
    "reservation_lines",
    metadata,
    sa.Column("reservation_id", sa.String(64), sa.ForeignKey("reservations.id"), primary_key=True),
    sa.Column("item_id", sa.String(64), primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
)


MIGRATIONS = (creating_tables(1, "stock, reservations, reservation lines", metadata),)


class SqlInventoryRepository:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._engine = database.engine

    async def level(self, item_id: str) -> StockLevel | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(sa.select(stock).where(stock.c.item_id == item_id))
            ).first()
        return _level(row._mapping) if row else None

    async def levels(self, offset: int, limit: int) -> tuple[list[StockLevel], int]:
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(stock).order_by(stock.c.item_id).offset(offset).limit(limit)
                )
            ).all()
            total = (
                await connection.execute(sa.select(sa.func.count()).select_from(stock))
            ).scalar_one()
        return [_level(row._mapping) for row in rows], int(total)

    async def reservations(self, offset: int, limit: int) -> tuple[list[Reservation], int]:
        async with self._engine.connect() as connection:
            ids = (
                (
                    await connection.execute(
                        sa.select(reservations.c.id)
                        .order_by(reservations.c.create_us, reservations.c.id)
                        .offset(offset)
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            total = (
                await connection.execute(sa.select(sa.func.count()).select_from(reservations))
            ).scalar_one()
            return [await _reservation(connection, rid) for rid in ids], int(total)

    async def reserve(self, request: ReserveRequest) -> tuple[Reservation, list[StockLevel]]:
        now = now_micros()
        async with self._database.writing() as connection:
            earlier = (
                await connection.execute(
                    sa.select(reservations).where(reservations.c.request_id == request.request_id)
                )
            ).first()
            if earlier is not None:
                if earlier.fingerprint != request.fingerprint:
                    raise invalid_field(
                        "request_id",
                        "was already used for a different request",
                        "REQUEST_ID_REUSED",
                    )
                return await _reservation(connection, earlier.id), []
            for line in request.lines:
                taken = await connection.execute(
                    stock.update()
                    .where(
                        stock.c.item_id == line.item_id,
                        stock.c.on_hand - stock.c.reserved >= line.quantity,
                    )
                    .values(reserved=stock.c.reserved + line.quantity, update_us=now)
                )
                if taken.rowcount != 1:
                    available = (
                        await connection.execute(
                            sa.select(stock.c.on_hand - stock.c.reserved).where(
                                stock.c.item_id == line.item_id
                            )
                        )
                    ).scalar()
                    raise DomainError(
                        ErrorKind.FAILED_PRECONDITION,
                        "INSUFFICIENT_STOCK",
                        f"inventory/items/{line.item_id}: {line.quantity} requested, "
                        f"{available or 0} available",
                        {
                            "item": f"inventory/items/{line.item_id}",
                            "requested": str(line.quantity),
                            "available": str(available or 0),
                        },
                    )
            await connection.execute(
                reservations.insert().values(
                    id=request.reservation_id,
                    request_id=request.request_id,
                    fingerprint=request.fingerprint,
                    state=ReservationState.PENDING.value,
                    expire_us=to_micros(request.expire_time),
                    create_us=now,
                )
            )
            await connection.execute(
                reservation_lines.insert(),
                [
                    {
                        "reservation_id": request.reservation_id,
                        "item_id": line.item_id,
                        "quantity": line.quantity,
                    }
                    for line in request.lines
                ],
            )
            return (
                await _reservation(connection, request.reservation_id),
                await _levels_of(connection, [line.item_id for line in request.lines]),
            )

    async def commit(self, reservation_id: str) -> tuple[Reservation, list[StockLevel]]:
        return await self._settle(reservation_id, ReservationState.COMMITTED)

    async def release(self, reservation_id: str) -> tuple[Reservation, list[StockLevel]]:
        return await self._settle(reservation_id, ReservationState.RELEASED)

    async def expire_due(self, now: datetime) -> list[StockLevel]:
        async with self._database.writing() as connection:
            due = (
                (
                    await connection.execute(
                        sa.select(reservations.c.id)
                        .where(
                            reservations.c.state == ReservationState.PENDING.value,
                            reservations.c.expire_us <= to_micros(now),
                        )
                        # Replicas share the sweep: each takes the rows no other holds.
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            items: list[str] = []
            for reservation_id in due:
                reservation = await _reservation(connection, reservation_id)
                await _return_stock(connection, reservation, ReservationState.EXPIRED)
                items += [line.item_id for line in reservation.lines]
            return await _levels_of(connection, items)

    async def adjust(self, item_id: str, delta: int) -> StockLevel:
        now = now_micros()
        async with self._database.writing() as connection:
            current = (
                await connection.execute(
                    sa.select(stock).where(stock.c.item_id == item_id).with_for_update()
                )
            ).first()
            if current is None:
                if delta < 0:
                    raise DomainError(
                        ErrorKind.FAILED_PRECONDITION,
                        "ITEM_NOT_STOCKED",
                        f"inventory/items/{item_id} has no stock to remove",
                    )
                await connection.execute(
                    stock.insert().values(item_id=item_id, on_hand=delta, reserved=0, update_us=now)
                )
            else:
                if current.on_hand + delta < current.reserved:
                    raise DomainError(
                        ErrorKind.FAILED_PRECONDITION,
                        "STOCK_BELOW_RESERVED",
                        f"inventory/items/{item_id}: on hand would drop to "
                        f"{current.on_hand + delta}, below the {current.reserved} reserved",
                        {"item": f"inventory/items/{item_id}"},
                    )
                await connection.execute(
                    stock.update()
                    .where(stock.c.item_id == item_id)
                    .values(on_hand=stock.c.on_hand + delta, update_us=now)
                )
            return (await _levels_of(connection, [item_id]))[0]

    async def _settle(
        self, reservation_id: str, target: ReservationState
    ) -> tuple[Reservation, list[StockLevel]]:
        # A reservation found past its time is expired here and now; that change is kept even
        # when the settle it came with is refused.
        # The reservation's row lock (PostgreSQL) makes concurrent settles take turns; each
        # change below is known, so nothing is read twice.
        async with self._database.writing() as connection:
            reservation = await _reservation(connection, reservation_id, for_update=True)
            expired_now = (
                reservation.state is ReservationState.PENDING
                and reservation.expire_time <= datetime.now(UTC)
            )
            if expired_now:
                await _return_stock(connection, reservation, ReservationState.EXPIRED)
                reservation = replace(reservation, state=ReservationState.EXPIRED)
            items = [line.item_id for line in reservation.lines]
            done = reservation.state is target or (
                target is ReservationState.RELEASED
                and reservation.state is ReservationState.EXPIRED
            )
            if not done and reservation.state is ReservationState.PENDING:
                await _return_stock(connection, reservation, target)
                return replace(reservation, state=target), await _levels_of(connection, items)
            changed = await _levels_of(connection, items) if done and expired_now else []
        if done:
            return reservation, changed
        raise DomainError(
            ErrorKind.FAILED_PRECONDITION,
            "RESERVATION_NOT_PENDING",
            f"{reservation.name} is {reservation.state.value.lower()}",
            {"reservation": reservation.name, "state": reservation.state.value},
        )


async def _return_stock(
    connection: AsyncConnection, reservation: Reservation, state: ReservationState
) -> None:
    """Ends a pending reservation: commit deducts the held units, the others give them back."""
    now = now_micros()
    for line in reservation.lines:
        values: dict[str, Any] = {"reserved": stock.c.reserved - line.quantity, "update_us": now}
        if state is ReservationState.COMMITTED:
            values["on_hand"] = stock.c.on_hand - line.quantity
        await connection.execute(
            stock.update().where(stock.c.item_id == line.item_id).values(**values)
        )
    await connection.execute(
        reservations.update()
        .where(reservations.c.id == reservation.reservation_id)
        .values(state=state.value)
    )


async def _reservation(
    connection: AsyncConnection, reservation_id: str, *, for_update: bool = False
) -> Reservation:
    query = sa.select(reservations).where(reservations.c.id == reservation_id)
    row = (await connection.execute(query.with_for_update() if for_update else query)).first()
    if row is None:
        raise DomainError(
            ErrorKind.NOT_FOUND,
            "RESERVATION_NOT_FOUND",
            f"inventory/reservations/{reservation_id} not found",
            {"resource": f"inventory/reservations/{reservation_id}"},
        )
    lines = (
        await connection.execute(
            sa.select(reservation_lines)
            .where(reservation_lines.c.reservation_id == reservation_id)
            .order_by(reservation_lines.c.item_id)
        )
    ).all()
    return Reservation(
        reservation_id=row.id,
        lines=tuple(Line(line.item_id, line.quantity) for line in lines),
        state=ReservationState(row.state),
        expire_time=from_micros(row.expire_us),
        create_time=from_micros(row.create_us),
    )


async def _levels_of(connection: AsyncConnection, item_ids: list[str]) -> list[StockLevel]:
    if not item_ids:
        return []
    rows = (
        await connection.execute(sa.select(stock).where(stock.c.item_id.in_(sorted(set(item_ids)))))
    ).all()
    return [_level(row._mapping) for row in rows]


def _level(row: Any) -> StockLevel:
    return StockLevel(
        row["item_id"], row["on_hand"], row["reserved"], from_micros(row["update_us"])
    )
