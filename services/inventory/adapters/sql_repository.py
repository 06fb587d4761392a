"""InventoryRepository: each operation one transaction function handed to the database whole
(`Database.transaction`), the same SQL for SQLite and PostgreSQL; the tables are declared with
SQLAlchemy for the migration that creates them. Stock changes return the levels they leave
(`RETURNING`), so nothing is read twice.

No oversell: a line is reserved by one conditional UPDATE (`... WHERE on_hand - reserved >= q`),
so concurrent reservations cannot both take the last units, and a reservation that cannot take
every line rolls back whole.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import sqlalchemy as sa

from libs.runtime.errors import DomainError, ErrorKind, invalid_field
from libs.storage.database import UNIQUE_VIOLATIONS, Database, creating_tables
from libs.storage.timestamps import from_micros, now_micros, to_micros
from libs.storage.transaction import Row, Transaction, fetch_page
from services.inventory.domain.model import Line, Reservation, ReservationState, StockLevel
from services.inventory.domain.ports import ReserveRequest

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


_LEVEL = "item_id, on_hand, reserved, update_us"


class SqlInventoryRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def level(self, item_id: str) -> StockLevel | None:
        query = f"SELECT {_LEVEL} FROM stock WHERE item_id = $1"
        row = await self._database.fetchrow(query, item_id)
        return _level(row) if row else None

    async def levels(self, offset: int, limit: int) -> tuple[list[StockLevel], int]:
        async def levels(tx: Transaction) -> tuple[list[StockLevel], int]:
            rows, total = await fetch_page(
                tx,
                f"SELECT {_LEVEL} FROM stock ORDER BY item_id",
                "SELECT count(*) FROM stock",
                (),
                limit=limit,
                offset=offset,
            )
            return [_level(row) for row in rows], total

        return await self._database.transaction(levels, write=False)

    async def reservations(self, offset: int, limit: int) -> tuple[list[Reservation], int]:
        async def page(tx: Transaction) -> tuple[list[Reservation], int]:
            rows, total = await fetch_page(
                tx,
                "SELECT id FROM reservations ORDER BY create_us, id",
                "SELECT count(*) FROM reservations",
                (),
                limit=limit,
                offset=offset,
            )
            return [await _reservation(tx, row[0]) for row in rows], total

        return await self._database.transaction(page, write=False)

    async def reserve(self, request: ReserveRequest) -> tuple[Reservation, list[StockLevel]]:
        now = now_micros()

        async def earlier(tx: Transaction) -> tuple[Reservation, list[StockLevel]] | None:
            row = await tx.fetchrow(
                "SELECT id, fingerprint FROM reservations WHERE request_id = $1",
                request.request_id,
            )
            if row is None:
                return None
            if row["fingerprint"] != request.fingerprint:
                raise invalid_field(
                    "request_id", "was already used for a different request", "REQUEST_ID_REUSED"
                )
            return await _reservation(tx, row["id"]), []

        async def reserve(tx: Transaction) -> tuple[Reservation, list[StockLevel]]:
            found = await earlier(tx)
            if found is not None:
                return found
            levels = []
            for line in request.lines:
                taken = await tx.fetchrow(
                    "UPDATE stock SET reserved = reserved + $1, update_us = $2"
                    f" WHERE item_id = $3 AND on_hand - reserved >= $1 RETURNING {_LEVEL}",
                    line.quantity,
                    now,
                    line.item_id,
                )
                if taken is None:
                    available_row = await tx.fetchrow(
                        "SELECT on_hand - reserved FROM stock WHERE item_id = $1", line.item_id
                    )
                    available = available_row[0] if available_row else 0
                    raise DomainError(
                        ErrorKind.FAILED_PRECONDITION,
                        "INSUFFICIENT_STOCK",
                        f"inventory/items/{line.item_id}: {line.quantity} requested, "
                        f"{available} available",
                        {
                            "item": f"inventory/items/{line.item_id}",
                            "requested": str(line.quantity),
                            "available": str(available),
                        },
                    )
                levels.append(_level(taken))
            expire_us = to_micros(request.expire_time)
            await tx.execute(
                "INSERT INTO reservations (id, request_id, fingerprint, state, expire_us,"
                " create_us) VALUES ($1, $2, $3, $4, $5, $6)",
                request.reservation_id,
                request.request_id,
                request.fingerprint,
                ReservationState.PENDING.value,
                expire_us,
                now,
            )
            await tx.executemany(
                "INSERT INTO reservation_lines (reservation_id, item_id, quantity)"
                " VALUES ($1, $2, $3)",
                [(request.reservation_id, line.item_id, line.quantity) for line in request.lines],
            )
            reservation = Reservation(
                reservation_id=request.reservation_id,
                lines=tuple(sorted(request.lines, key=lambda line: line.item_id)),
                state=ReservationState.PENDING,
                expire_time=from_micros(expire_us),
                create_time=from_micros(now),
            )
            return reservation, sorted(levels, key=lambda level: level.item_id)

        try:
            return await self._database.transaction(reserve)
        except UNIQUE_VIOLATIONS:
            # A concurrent reserve with this request id committed first (the unique request_id
            # settles the race; this one's stock changes rolled back): answer with it.
            found = await self._database.transaction(earlier, write=False)
            if found is None:
                raise
            return found

    async def commit(self, reservation_id: str) -> tuple[Reservation, list[StockLevel]]:
        return await self._settle(reservation_id, ReservationState.COMMITTED)

    async def release(self, reservation_id: str) -> tuple[Reservation, list[StockLevel]]:
        return await self._settle(reservation_id, ReservationState.RELEASED)

    async def expire_due(self, now: datetime) -> list[StockLevel]:
        async def expire(tx: Transaction) -> list[StockLevel]:
            # Replicas share the sweep: each takes the rows no other holds.
            due = await tx.fetch(
                "SELECT id FROM reservations WHERE state = $1 AND expire_us <= $2"
                " FOR UPDATE SKIP LOCKED",
                ReservationState.PENDING.value,
                to_micros(now),
            )
            levels: dict[str, StockLevel] = {}
            for row in due:
                reservation = await _reservation(tx, row[0])
                for level in await _return_stock(tx, reservation, ReservationState.EXPIRED):
                    levels[level.item_id] = level
            return [levels[item] for item in sorted(levels)]

        return await self._database.transaction(expire)

    async def adjust(self, item_id: str, delta: int) -> StockLevel:
        now = now_micros()

        async def adjust(tx: Transaction) -> StockLevel:
            current = await tx.fetchrow(
                "SELECT on_hand, reserved FROM stock WHERE item_id = $1 FOR UPDATE", item_id
            )
            if current is None:
                if delta < 0:
                    raise DomainError(
                        ErrorKind.FAILED_PRECONDITION,
                        "ITEM_NOT_STOCKED",
                        f"inventory/items/{item_id} has no stock to remove",
                    )
                row = await tx.fetchrow(
                    "INSERT INTO stock (item_id, on_hand, reserved, update_us)"
                    f" VALUES ($1, $2, 0, $3) RETURNING {_LEVEL}",
                    item_id,
                    delta,
                    now,
                )
            else:
                if current["on_hand"] + delta < current["reserved"]:
                    raise DomainError(
                        ErrorKind.FAILED_PRECONDITION,
                        "STOCK_BELOW_RESERVED",
                        f"inventory/items/{item_id}: on hand would drop to "
                        f"{current['on_hand'] + delta}, below the {current['reserved']} reserved",
                        {"item": f"inventory/items/{item_id}"},
                    )
                row = await tx.fetchrow(
                    "UPDATE stock SET on_hand = on_hand + $1, update_us = $2"
                    f" WHERE item_id = $3 RETURNING {_LEVEL}",
                    delta,
                    now,
                    item_id,
                )
            assert row is not None
            return _level(row)

        return await self._database.transaction(adjust)

    async def _settle(
        self, reservation_id: str, target: ReservationState
    ) -> tuple[Reservation, list[StockLevel]]:
        # A reservation found past its time is expired here and now; that change is kept even
        # when the settle it came with is refused. The reservation's row lock (PostgreSQL) makes
        # concurrent settles take turns; each change is known, so nothing is read twice.
        async def settle(tx: Transaction) -> tuple[Reservation, list[StockLevel], bool]:
            reservation = await _reservation(tx, reservation_id, for_update=True)
            changed: list[StockLevel] = []
            if (
                reservation.state is ReservationState.PENDING
                and reservation.expire_time <= datetime.now(UTC)
            ):
                changed = await _return_stock(tx, reservation, ReservationState.EXPIRED)
                reservation = replace(reservation, state=ReservationState.EXPIRED)
            done = reservation.state is target or (
                target is ReservationState.RELEASED
                and reservation.state is ReservationState.EXPIRED
            )
            if not done and reservation.state is ReservationState.PENDING:
                changed = await _return_stock(tx, reservation, target)
                return replace(reservation, state=target), changed, True
            return reservation, changed, done

        reservation, changed, done = await self._database.transaction(settle)
        if done:
            return reservation, changed
        raise DomainError(
            ErrorKind.FAILED_PRECONDITION,
            "RESERVATION_NOT_PENDING",
            f"{reservation.name} is {reservation.state.value.lower()}",
            {"reservation": reservation.name, "state": reservation.state.value},
        )


async def _return_stock(
    tx: Transaction, reservation: Reservation, state: ReservationState
) -> list[StockLevel]:
    """Ends a pending reservation: commit deducts the held units, the others give them back.
    Returns the levels it leaves."""
    now = now_micros()
    deduct = "on_hand = on_hand - $1, " if state is ReservationState.COMMITTED else ""
    levels = []
    for line in reservation.lines:
        row = await tx.fetchrow(
            f"UPDATE stock SET {deduct}reserved = reserved - $1, update_us = $2"
            f" WHERE item_id = $3 RETURNING {_LEVEL}",
            line.quantity,
            now,
            line.item_id,
        )
        if row is not None:
            levels.append(_level(row))
    await tx.execute(
        "UPDATE reservations SET state = $1 WHERE id = $2",
        state.value,
        reservation.reservation_id,
    )
    return sorted(levels, key=lambda level: level.item_id)


async def _reservation(
    tx: Transaction, reservation_id: str, *, for_update: bool = False
) -> Reservation:
    lock = " FOR UPDATE" if for_update else ""
    row = await tx.fetchrow(
        f"SELECT id, state, expire_us, create_us FROM reservations WHERE id = $1{lock}",
        reservation_id,
    )
    if row is None:
        raise DomainError(
            ErrorKind.NOT_FOUND,
            "RESERVATION_NOT_FOUND",
            f"inventory/reservations/{reservation_id} not found",
            {"resource": f"inventory/reservations/{reservation_id}"},
        )
    lines = await tx.fetch(
        "SELECT item_id, quantity FROM reservation_lines WHERE reservation_id = $1"
        " ORDER BY item_id",
        reservation_id,
    )
    return Reservation(
        reservation_id=row["id"],
        lines=tuple(Line(line["item_id"], line["quantity"]) for line in lines),
        state=ReservationState(row["state"]),
        expire_time=from_micros(row["expire_us"]),
        create_time=from_micros(row["create_us"]),
    )


def _level(row: Row) -> StockLevel:
    return StockLevel(
        row["item_id"], row["on_hand"], row["reserved"], from_micros(row["update_us"])
    )
