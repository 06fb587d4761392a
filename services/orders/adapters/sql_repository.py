"""OrderRepository on SQLAlchemy async core (SQLite or PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.inbox import first_time
from libs.messaging.outbox import enqueue
from libs.messaging.schema import messaging_migration
from libs.money import Money
from libs.storage.database import Database, Migration, creating_tables
from libs.storage.timestamps import from_micros, to_micros
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
    sa.Index("ix_orders_state_deadline", "state", "deadline_us"),
    sa.Index("ix_orders_state_update", "state", "update_us"),
)
# Every version of every order, so WatchOrder shows each state even when it looked too late.
order_versions = sa.Table(
    "order_versions",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("snapshot", sa.Text, nullable=False),
)
order_requests = sa.Table(
    "order_requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False),
)


async def _add_payment_method(connection: AsyncConnection) -> None:
    # Databases made by migration 1 before this column existed get it here; newer ones
    # already have it from the table definition.
    columns = await connection.run_sync(
        lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("orders")}
    )
    if "payment_method" not in columns:
        await connection.execute(
            sa.text(
                "ALTER TABLE orders ADD COLUMN payment_method VARCHAR(60)"
                " NOT NULL DEFAULT 'cards/default'"
            )
        )


async def _add_saga_columns(connection: AsyncConnection) -> None:
    columns = await connection.run_sync(
        lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("orders")}
    )
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
    for row in (await connection.execute(sa.select(orders))).all():
        order = _order(row._mapping)
        known = await connection.execute(
            sa.select(order_versions.c.version).where(
                order_versions.c.order_id == order.order_id,
                order_versions.c.version == order.version,
            )
        )
        if known.first() is None:
            await connection.execute(order_versions.insert().values(**_version(order)))


async def _old_deadlines(connection: AsyncConnection) -> None:
    # An order awaiting payment from before payment deadlines gets the default one (10 minutes
    # after it was taken), so the sweeper ends it too.
    await connection.execute(
        orders.update()
        .where(orders.c.state == OrderState.PENDING_PAYMENT.value, orders.c.deadline_us == 0)
        .values(deadline_us=orders.c.create_us + 600_000_000)
    )


MIGRATIONS = (
    creating_tables(1, "orders and their request ids", metadata),
    Migration(2, "orders: payment method", _add_payment_method),
    messaging_migration(3),
    Migration(4, "orders: payment state and deadline", _add_saga_columns),
    Migration(5, "orders: every version of an order", _add_versions),
    Migration(6, "orders: a payment deadline for orders taken before deadlines", _old_deadlines),
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
        self._engine = database.engine
        self._messages = messages
        self._on_commit = on_commit  # wakes the outbox relay

    async def get(self, order_id: str) -> Order | None:
        async with self._engine.connect() as connection:
            return await self._get(connection, order_id)

    async def by_request_id(self, request_id: str) -> tuple[Order, str] | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(orders, order_requests.c.fingerprint)
                    .join(order_requests, order_requests.c.order_id == orders.c.id)
                    .where(order_requests.c.request_id == request_id)
                )
            ).first()
        return (_order(row._mapping), row.fingerprint) if row else None

    async def create(
        self, order: Order, request_id: str, fingerprint: str, messages: Sequence[OrderMessage]
    ) -> Order:
        try:
            async with self._database.writing() as connection:
                await connection.execute(orders.insert().values(**_columns(order)))
                await connection.execute(order_versions.insert().values(**_version(order)))
                await connection.execute(
                    order_requests.insert().values(
                        request_id=request_id, fingerprint=fingerprint, order_id=order.order_id
                    )
                )
                await enqueue(connection, [self._messages.outgoing(m) for m in messages])
        except IntegrityError:
            # A concurrent create with this request id committed first (its key settles the
            # race; the caller read the request id before): that order is the answer.
            raced = await self.by_request_id(request_id)
            if raced is None:
                raise
            return raced[0]
        self._on_commit()
        return order

    async def save(
        self, read: Order, changed: Order, messages: Sequence[OrderMessage], handled: str = ""
    ) -> bool:
        values = _columns(changed)
        del values["id"], values["create_us"]
        try:
            async with self._database.writing() as connection:
                if handled and not await first_time(connection, self._inbox, handled):
                    return True
                updated = await connection.execute(
                    orders.update()
                    .where(orders.c.id == read.order_id, orders.c.version == read.version)
                    .values(**values)
                )
                if updated.rowcount != 1:
                    raise _Lost  # nothing of this transaction stays, the inbox row included
                await connection.execute(order_versions.insert().values(**_version(changed)))
                await enqueue(connection, [self._messages.outgoing(m) for m in messages])
        except _Lost:
            return False
        if messages:
            self._on_commit()
        return True

    async def versions(self, order_id: str, after: int) -> list[Order]:
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(order_versions.c.snapshot)
                    .where(order_versions.c.order_id == order_id, order_versions.c.version > after)
                    .order_by(order_versions.c.version)
                )
            ).all()
        return [_order(json.loads(row.snapshot)) for row in rows]

    async def due(self, now: datetime, stalled_after: timedelta, limit: int) -> list[Order]:
        stalled = to_micros(now - stalled_after)
        condition = sa.or_(
            sa.and_(
                orders.c.state == OrderState.PENDING_PAYMENT.value,
                orders.c.deadline_us > 0,
                orders.c.deadline_us <= to_micros(now),
            ),
            sa.and_(
                orders.c.state.in_([OrderState.AUTHORIZED.value, OrderState.CANCELLING.value]),
                orders.c.update_us <= stalled,
            ),
            sa.and_(
                orders.c.state == OrderState.CONFIRMED.value,
                orders.c.payment_state == PaymentState.AUTHORIZED.value,
                orders.c.update_us <= stalled,
            ),
        )
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(orders).where(condition).order_by(orders.c.update_us).limit(limit)
                )
            ).all()
        return [_order(row._mapping) for row in rows]

    @staticmethod
    async def _get(connection: AsyncConnection, order_id: str) -> Order | None:
        row = (await connection.execute(sa.select(orders).where(orders.c.id == order_id))).first()
        return _order(row._mapping) if row else None

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Order], int]:
        condition = [orders.c.customer == customer] if customer else []
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(orders)
                    .where(*condition)
                    .order_by(orders.c.create_us.desc(), orders.c.id)
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
            total = (
                await connection.execute(
                    sa.select(sa.func.count()).select_from(orders).where(*condition)
                )
            ).scalar_one()
        return [_order(row._mapping) for row in rows], int(total)


def _columns(order: Order) -> dict[str, Any]:
    return {
        "id": order.order_id,
        "customer": order.customer,
        "state": order.state.value,
        "reservation": order.reservation,
        "lines": json.dumps(
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
        "cancel_reason": order.cancel_reason,
        "create_us": to_micros(order.create_time),
        "update_us": to_micros(order.update_time),
        "version": order.version,
        "payment_method": order.payment_method,
        "payment_state": order.payment_state.value,
        "deadline_us": to_micros(order.payment_deadline) if order.payment_deadline else 0,
    }


def _version(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "version": order.version,
        "snapshot": json.dumps(_columns(order)),
    }


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
