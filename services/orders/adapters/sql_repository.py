"""OrderRepository on SQLAlchemy async core (SQLite or PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from libs.storage.database import Database, Migration
from libs.storage.timestamps import from_micros, now_micros, to_micros
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
)
order_requests = sa.Table(
    "order_requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False),
)


async def _create_schema(connection: AsyncConnection) -> None:
    await connection.run_sync(metadata.create_all)


MIGRATIONS = (Migration(1, "orders and their request ids", _create_schema),)


class SqlOrderRepository:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._engine = database.engine

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
        return order

    async def set_state(self, order: Order, state: OrderState, cancel_reason: str = "") -> Order:
        now = now_micros()
        async with self._database.writing() as connection:
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
            row = (
                await connection.execute(sa.select(orders).where(orders.c.id == order.order_id))
            ).first()
        assert row is not None
        return _order(row._mapping)

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
    )
