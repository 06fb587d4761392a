"""OrderRepository: each operation one transaction function handed to the database whole
(`Database.transaction`), the same SQL for SQLite and PostgreSQL; the tables are declared with
SQLAlchemy for the migrations that create them.

Everything a transaction writes is computed before it starts (the row, the version's snapshot,
the outgoing messages), so the transaction only runs statements. A change is one guarded
UPDATE (`WHERE version = <the version read>`) with the version's row, the outbox rows and the
inbox row of the message that caused it; a create is one INSERT whose unique request id settles
a race with its own retry (`ON CONFLICT DO NOTHING`: the loser reads the winner in the same
transaction and answers with it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.envelope import Outgoing
from libs.messaging.inbox import first_time
from libs.messaging.outbox import enqueue
from libs.messaging.schema import messaging_migration
from libs.money import Money
from libs.storage.database import Database, Migration, creating_tables
from libs.storage.timestamps import from_micros, to_micros
from libs.storage.transaction import Row, Transaction, fetch_page
from services.orders.adapters.order_messages import OrderMessages
from services.orders.domain.model import Order, OrderLine, OrderMessage, OrderState, PaymentState

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("customer", sa.String(80), nullable=False, index=True),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("reservation", sa.String(120), nullable=False),
    sa.Column("lines", sa.Text, nullable=False),
    sa.Column("cancel_reason", sa.String(200), nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("update_us", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("payment_method", sa.String(60), nullable=False, server_default="cards/default"),
    sa.Column("payment_state", sa.String(16), nullable=False, server_default=""),
    # While PENDING_PAYMENT: when the sweeper cancels the order (microseconds; 0 = never).
    sa.Column("deadline_us", sa.BigInteger, nullable=False, server_default="0"),
    # The CreateOrder request that created it (unique: a retry finds it) and that request's
    # fingerprint. Nullable only because migration 7 adds them to existing tables.
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("fingerprint", sa.String(64), nullable=True),
    sa.Index("ix_orders_state_deadline", "state", "deadline_us"),
    sa.Index("ix_orders_state_update", "state", "update_us"),
    # The sweeper's uncaptured CONFIRMED orders: without payment_state in the key it read every
    # confirmed order each sweep (a million orders, a million rows every 5 s).
    sa.Index("ix_orders_state_payment_update", "state", "payment_state", "update_us"),
    sa.Index("ux_orders_request_id", "request_id", unique=True),
)
# Every version of every order, so WatchOrder shows each state even when it looked too late.
order_versions = sa.Table(
    "order_versions",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("snapshot", sa.Text, nullable=False),
)

# An order's columns as the domain knows them (a version's snapshot has exactly these keys).
_COLUMNS = (
    "id",
    "customer",
    "state",
    "reservation",
    "lines",
    "cancel_reason",
    "create_us",
    "update_us",
    "version",
    "payment_method",
    "payment_state",
    "deadline_us",
)
_ORDER = ", ".join(_COLUMNS)
_INSERT_ORDER = (
    f"INSERT INTO orders ({_ORDER}, request_id, fingerprint)"
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(_COLUMNS) + 3))})"
    " ON CONFLICT (request_id) DO NOTHING"
)
# Every column but id and create_us, which never change; guarded by the version read.
_CHANGING = tuple(i for i, c in enumerate(_COLUMNS) if c not in ("id", "create_us"))
_UPDATE_ORDER = (
    f"UPDATE orders SET {', '.join(f'{_COLUMNS[i]} = ${n}' for n, i in enumerate(_CHANGING, 1))}"
    f" WHERE id = ${len(_CHANGING) + 1} AND version = ${len(_CHANGING) + 2}"
)
_INSERT_VERSION = "INSERT INTO order_versions (order_id, version, snapshot) VALUES ($1, $2, $3)"
_BY_REQUEST_ID = f"SELECT {_ORDER}, fingerprint FROM orders WHERE request_id = $1"


async def _add_payment_method(connection: AsyncConnection) -> None:
    # Databases made by migration 1 before this column existed get it here; newer ones
    # already have it from the table definition.
    columns = await _columns_of(connection, "orders")
    if "payment_method" not in columns:
        await connection.execute(
            sa.text(
                "ALTER TABLE orders ADD COLUMN payment_method VARCHAR(60)"
                " NOT NULL DEFAULT 'cards/default'"
            )
        )


async def _add_saga_columns(connection: AsyncConnection) -> None:
    columns = await _columns_of(connection, "orders")
    if "payment_state" not in columns:
        await connection.execute(
            sa.text("ALTER TABLE orders ADD COLUMN payment_state VARCHAR(16) NOT NULL DEFAULT ''")
        )
    if "deadline_us" not in columns:
        await connection.execute(
            sa.text("ALTER TABLE orders ADD COLUMN deadline_us BIGINT NOT NULL DEFAULT 0")
        )
        await connection.execute(
            sa.text("CREATE INDEX ix_orders_state_deadline ON orders (state, deadline_us)")
        )
        await connection.execute(
            sa.text("CREATE INDEX ix_orders_state_update ON orders (state, update_us)")
        )


async def _add_versions(connection: AsyncConnection) -> None:
    # Orders stored before versions were kept start their history at their current version.
    await connection.run_sync(metadata.create_all)
    rows = await connection.execute(sa.text(f"SELECT {_ORDER} FROM orders"))
    for row in rows.all():
        order = _order(row._mapping)
        known = await connection.execute(
            sa.text("SELECT 1 FROM order_versions WHERE order_id = :id AND version = :version"),
            {"id": order.order_id, "version": order.version},
        )
        if known.first() is None:
            await connection.execute(
                sa.text(
                    "INSERT INTO order_versions (order_id, version, snapshot)"
                    " VALUES (:id, :version, :snapshot)"
                ),
                {"id": order.order_id, "version": order.version, "snapshot": _snapshot(order)},
            )


async def _old_deadlines(connection: AsyncConnection) -> None:
    # An order awaiting payment from before payment deadlines gets the default one (10 minutes
    # after it was taken), so the sweeper ends it too.
    await connection.execute(
        sa.text(
            "UPDATE orders SET deadline_us = create_us + 600000000"
            " WHERE state = :state AND deadline_us = 0"
        ),
        {"state": OrderState.PENDING_PAYMENT.value},
    )


async def _request_ids_on_orders(connection: AsyncConnection) -> None:
    # The request id and fingerprint were kept in a table of their own (order_requests), one
    # more INSERT per order and a join per lookup; they move onto the order's row.
    columns = await _columns_of(connection, "orders")
    if "request_id" not in columns:
        await connection.execute(sa.text("ALTER TABLE orders ADD COLUMN request_id VARCHAR(64)"))
        await connection.execute(sa.text("ALTER TABLE orders ADD COLUMN fingerprint VARCHAR(64)"))
    if await connection.run_sync(lambda sync: sa.inspect(sync).has_table("order_requests")):
        await connection.execute(
            sa.text(
                "UPDATE orders SET"
                " request_id = (SELECT r.request_id FROM order_requests r"
                " WHERE r.order_id = orders.id),"
                " fingerprint = (SELECT r.fingerprint FROM order_requests r"
                " WHERE r.order_id = orders.id)"
                " WHERE request_id IS NULL"
            )
        )
        await connection.execute(sa.text("DROP TABLE order_requests"))
    await connection.execute(
        sa.text("CREATE UNIQUE INDEX IF NOT EXISTS ux_orders_request_id ON orders (request_id)")
    )


async def _sweeper_index(connection: AsyncConnection) -> None:
    await connection.execute(
        sa.text(
            "CREATE INDEX IF NOT EXISTS ix_orders_state_payment_update"
            " ON orders (state, payment_state, update_us)"
        )
    )


async def _columns_of(connection: AsyncConnection, table: str) -> set[str]:
    return await connection.run_sync(
        lambda sync: {c["name"] for c in sa.inspect(sync).get_columns(table)}
    )


# A new database gets today's tables from step 1; the later steps find them as they want them.
MIGRATIONS = (
    creating_tables(1, "orders and their request ids", metadata),
    Migration(2, "orders: payment method", _add_payment_method),
    messaging_migration(3),
    Migration(4, "orders: payment state and deadline", _add_saga_columns),
    Migration(5, "orders: every version of an order", _add_versions),
    Migration(6, "orders: a payment deadline for orders taken before deadlines", _old_deadlines),
    Migration(7, "orders: the request id on the order's row", _request_ids_on_orders),
    Migration(8, "orders: an index for the sweeper's uncaptured orders", _sweeper_index),
)


class _Lost(Exception):
    """A guarded update found the order at another version."""


class SqlOrderRepository:
    def __init__(
        self,
        database: Database,
        messages: OrderMessages,
        *,
        inbox: str,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        self._inbox = inbox  # the queue whose messages it records as handled (its consumer)
        self._messages = messages
        self._on_commit = on_commit  # wakes the outbox relay

    async def get(self, order_id: str) -> Order | None:
        row = await self._database.fetchrow(f"SELECT {_ORDER} FROM orders WHERE id = $1", order_id)
        return _order(row) if row else None

    async def by_request_id(self, request_id: str) -> tuple[Order, str] | None:
        row = await self._database.fetchrow(_BY_REQUEST_ID, request_id)
        return (_order(row), row["fingerprint"]) if row else None

    async def create(
        self, order: Order, request_id: str, fingerprint: str, messages: Sequence[OrderMessage]
    ) -> Order:
        row = _row(order)
        snapshot = _snapshot_of(row)
        outgoing = self._outgoing(messages)

        async def create(tx: Transaction) -> Order | None:
            if not await tx.execute(_INSERT_ORDER, *row, request_id, fingerprint):
                # A concurrent create with this request id committed first (its unique key
                # settles the race; the caller read the request id before): that order is the
                # answer, and this one sends nothing.
                raced = await tx.fetchrow(_BY_REQUEST_ID, request_id)
                assert raced is not None
                return _order(raced)
            await tx.execute(_INSERT_VERSION, order.order_id, order.version, snapshot)
            await enqueue(tx, outgoing)
            return None

        raced = await self._database.transaction(create)
        if raced is not None:
            return raced
        if outgoing:
            self._on_commit()
        return order

    async def save(
        self, read: Order, changed: Order, messages: Sequence[OrderMessage], handled: str = ""
    ) -> bool:
        row = _row(changed)
        snapshot = _snapshot_of(row)
        outgoing = self._outgoing(messages)
        changing = [row[i] for i in _CHANGING]

        async def save(tx: Transaction) -> bool:
            if handled and not await first_time(tx, self._inbox, handled):
                return False  # handled before: nothing changes
            if await tx.execute(_UPDATE_ORDER, *changing, read.order_id, read.version) != 1:
                raise _Lost  # nothing of this transaction stays, the inbox row included
            await tx.execute(_INSERT_VERSION, changed.order_id, changed.version, snapshot)
            await enqueue(tx, outgoing)
            return True

        try:
            written = await self._database.transaction(save)
        except _Lost:
            return False
        if written and outgoing:
            self._on_commit()
        return True

    def _outgoing(self, messages: Sequence[OrderMessage]) -> list[Outgoing]:
        # Built here, not on the database's thread (which the transaction holds).
        return [self._messages.outgoing(m) for m in messages]

    async def versions(self, order_id: str, after: int) -> list[Order]:
        async def versions(tx: Transaction) -> list[Row]:
            return await tx.fetch(
                "SELECT snapshot FROM order_versions WHERE order_id = $1 AND version > $2"
                " ORDER BY version",
                order_id,
                after,
            )

        rows = await self._database.transaction(versions, write=False)
        return [_order(json.loads(row[0])) for row in rows]

    async def due(self, now: datetime, stalled_after: timedelta, limit: int) -> list[Order]:
        async def due(tx: Transaction) -> list[Row]:
            return await tx.fetch(
                f"SELECT {_ORDER} FROM orders WHERE"
                " (state = $1 AND deadline_us > 0 AND deadline_us <= $2)"
                " OR (state IN ($3, $4) AND update_us <= $5)"
                " OR (state = $6 AND payment_state = $7 AND update_us <= $5)"
                " ORDER BY update_us LIMIT $8",
                OrderState.PENDING_PAYMENT.value,
                to_micros(now),
                OrderState.AUTHORIZED.value,
                OrderState.CANCELLING.value,
                to_micros(now - stalled_after),
                OrderState.CONFIRMED.value,
                PaymentState.AUTHORIZED.value,
                limit,
            )

        return [_order(row) for row in await self._database.transaction(due, write=False)]

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Order], int]:
        where, arguments = ("WHERE customer = $1", (customer,)) if customer else ("", ())

        async def page(tx: Transaction) -> tuple[list[Row], int]:
            return await fetch_page(
                tx,
                f"SELECT {_ORDER} FROM orders {where} ORDER BY create_us DESC, id",
                f"SELECT count(*) FROM orders {where}",
                arguments,
                limit=limit,
                offset=offset,
            )

        rows, total = await self._database.transaction(page, write=False)
        return [_order(row) for row in rows], total


def _row(order: Order) -> tuple[Any, ...]:
    """The order's columns, in `_COLUMNS` order."""
    return (
        order.order_id,
        order.customer,
        order.state.value,
        order.reservation,
        json.dumps(
            [
                {
                    "product": line.product_id,
                    "quantity": line.quantity,
                    "title": line.title,
                    "currency": line.unit_price.currency_code,
                    "price_nanos": line.unit_price.total_nanos,
                }
                for line in order.lines
            ]
        ),
        order.cancel_reason,
        to_micros(order.create_time),
        to_micros(order.update_time),
        order.version,
        order.payment_method,
        order.payment_state.value,
        to_micros(order.payment_deadline) if order.payment_deadline else 0,
    )


def _snapshot_of(row: tuple[Any, ...]) -> str:
    return json.dumps(dict(zip(_COLUMNS, row, strict=True)))


def _snapshot(order: Order) -> str:
    return _snapshot_of(_row(order))


def _order(row: Any) -> Order:
    lines = tuple(
        OrderLine(
            line["product"],
            line["quantity"],
            Money.from_total_nanos(line["currency"], line["price_nanos"]),
            line["title"],
        )
        for line in json.loads(row["lines"])
    )
    return Order(
        order_id=row["id"],
        customer=row["customer"],
        lines=lines,
        state=OrderState(row["state"]),
        reservation=row["reservation"],
        create_time=from_micros(row["create_us"]),
        update_time=from_micros(row["update_us"]),
        cancel_reason=row["cancel_reason"],
        version=row["version"],
        payment_method=row["payment_method"],
        payment_state=PaymentState(row["payment_state"]),
        payment_deadline=from_micros(row["deadline_us"]) if row["deadline_us"] else None,
    )
