"""OrderRepository on SQLAlchemy async core (SQLite or PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.inbox import first_time
from libs.messaging.outbox import enqueue
from libs.messaging.schema import messaging_migration
from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from libs.storage.database import Database, Migration, creating_tables
from libs.storage.timestamps import from_micros, now_micros, to_micros
from services.orders.adapters.order_messages import created_messages, state_event
from services.orders.domain.model import Order, OrderLine, OrderState

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


MIGRATIONS = (
    creating_tables(1, "orders and their request ids", metadata),
    Migration(2, "orders: payment method", _add_payment_method),
    messaging_migration(3),
)
INBOX = "orders.payment-results"


class SqlOrderRepository:
    def __init__(self, database: Database, on_commit: Callable[[], None] = lambda: None) -> None:
        self._database = database
        self._engine = database.engine
        self._on_commit = on_commit  # wakes the outbox relay

    async def get(self, order_id: str) -> Order | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(sa.select(orders).where(orders.c.id == order_id))
            ).first()
        return _order(row._mapping) if row else None

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

    async def create(self, order: Order, request_id: str, fingerprint: str) -> Order:
        async with self._database.writing() as connection:
            raced = (
                await connection.execute(
                    sa.select(order_requests.c.order_id).where(
                        order_requests.c.request_id == request_id
                    )
                )
            ).scalar()
            if raced is not None:
                row = (
                    await connection.execute(sa.select(orders).where(orders.c.id == raced))
                ).first()
                assert row is not None
                return _order(row._mapping)
            await connection.execute(orders.insert().values(**_columns(order)))
            await connection.execute(
                order_requests.insert().values(
                    request_id=request_id, fingerprint=fingerprint, order_id=order.order_id
                )
            )
            await enqueue(connection, created_messages(order))
        self._on_commit()
        return order

    async def set_state(
        self, order: Order, state: OrderState, cancel_reason: str = "", handled: str = ""
    ) -> Order:
        now = now_micros()
        async with self._database.writing() as connection:
            if handled and not await first_time(connection, INBOX, handled):
                current = await self._get(connection, order.order_id)
                assert current is not None
                return current
            updated = await connection.execute(
                orders.update()
                .where(orders.c.id == order.order_id, orders.c.version == order.version)
                .values(
                    state=state.value,
                    cancel_reason=cancel_reason,
                    update_us=now,
                    version=order.version + 1,
                )
            )
            if updated.rowcount != 1:
                raise DomainError(
                    ErrorKind.ABORTED,
                    "CONCURRENT_MODIFICATION",
                    f"{order.name} changed meanwhile; read it again",
                )
            changed = await self._get(connection, order.order_id)
            assert changed is not None
            await enqueue(connection, [state_event(changed)])
        self._on_commit()
        return changed

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
    )
