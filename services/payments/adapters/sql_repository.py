"""PaymentRepository on SQLAlchemy async core (SQLite or PostgreSQL), with the outbox."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.inbox import first_time
from libs.messaging.outbox import enqueue
from libs.messaging.schema import messaging_migration
from libs.money import Money
from libs.storage.database import Database, Migration, creating_tables, insert
from libs.storage.timestamps import from_micros, now_micros, to_micros
from services.payments.adapters.payment_events import state_event
from services.payments.domain.model import Payment, PaymentRequest, PaymentState

metadata = sa.MetaData()
payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("order_name", sa.String(80), nullable=False),
    sa.Column("customer", sa.String(80), nullable=False, index=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount_nanos", sa.BigInteger, nullable=False),
    sa.Column("payment_method", sa.String(60), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("decline_reason", sa.String(200), nullable=False),
    sa.Column("provider_reference", sa.String(80), nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("update_us", sa.BigInteger, nullable=False),
    sa.Column("void_reason", sa.String(200), nullable=False, server_default=""),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
)


async def _authorize_capture_void(connection: AsyncConnection) -> None:
    # Databases made before authorize/capture: the new columns, and the old states' names.
    columns = await connection.run_sync(
        lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("payments")}
    )
    if "void_reason" not in columns:
        await connection.execute(
            sa.text("ALTER TABLE payments ADD COLUMN void_reason VARCHAR(200) NOT NULL DEFAULT ''")
        )
    if "attempts" not in columns:
        await connection.execute(
            sa.text("ALTER TABLE payments ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
        )
    for old, new in (("SUCCEEDED", "CAPTURED"), ("FAILED", "DECLINED")):
        await connection.execute(payments.update().where(payments.c.state == old).values(state=new))


MIGRATIONS = (
    creating_tables(1, "payments", metadata),
    messaging_migration(2),
    Migration(3, "payments: authorize, capture, void", _authorize_capture_void),
)


class _Lost(Exception):
    """A guarded update found the payment in another state."""


class SqlPaymentRepository:
    def __init__(
        self, database: Database, *, inbox: str, on_commit: Callable[[], None] = lambda: None
    ) -> None:
        self._database = database
        self._inbox = inbox  # the queue whose messages it records as handled (its consumer)
        self._on_commit = on_commit  # wakes the outbox relay

    async def get(self, payment_id: str) -> Payment | None:
        async with self._database.engine.connect() as connection:
            return await _get(connection, payment_id)

    async def open(self, request: PaymentRequest, state: PaymentState) -> tuple[Payment, bool]:
        existing = await self.get(request.payment_id)
        if existing is not None:
            return existing, False
        now = now_micros()
        async with self._database.writing() as connection:
            # The key settles a race with another replica: the loser reads the winner's row.
            inserted = await connection.execute(
                insert(connection, payments)
                .values(
                    id=request.payment_id,
                    order_name=request.order,
                    customer=request.customer,
                    currency=request.amount.currency_code,
                    amount_nanos=request.amount.total_nanos,
                    payment_method=request.payment_method,
                    state=state.value,
                    decline_reason="",
                    provider_reference="",
                    void_reason="voided before it was authorized"
                    if state is PaymentState.VOIDED
                    else "",
                    attempts=0,
                    create_us=now,
                    update_us=now,
                )
                .on_conflict_do_nothing(index_elements=[payments.c.id])
            )
            if inserted.rowcount != 1:
                raced = await _get(connection, request.payment_id)
                assert raced is not None
                return raced, False
            created = await _get(connection, request.payment_id)
            assert created is not None
            announced = state_event(created)
            if announced is not None:
                await enqueue(connection, [announced])
        if announced is not None:
            self._on_commit()
        return created, True

    async def attempt(self, payment: Payment) -> Payment | None:
        async with self._database.writing() as connection:
            updated = await connection.execute(
                payments.update()
                .where(
                    payments.c.id == payment.payment_id,
                    payments.c.state == PaymentState.PENDING.value,
                )
                .values(attempts=payments.c.attempts + 1, update_us=now_micros())
            )
            if updated.rowcount != 1:
                return None
            return await _get(connection, payment.payment_id)

    async def transition(
        self,
        payment: Payment,
        state: PaymentState,
        *,
        reference: str | None = None,
        reason: str = "",
        message_id: str = "",
    ) -> Payment | None:
        values: dict[str, Any] = {"state": state.value, "update_us": now_micros()}
        if reference is not None:
            values["provider_reference"] = reference
        if state is PaymentState.DECLINED:
            values["decline_reason"] = reason
        elif state in (PaymentState.VOIDED, PaymentState.REFUNDED):
            values["void_reason"] = reason
        try:
            async with self._database.writing() as connection:
                if message_id and not await first_time(connection, self._inbox, message_id):
                    return await _get(connection, payment.payment_id)
                updated = await connection.execute(
                    payments.update()
                    .where(
                        payments.c.id == payment.payment_id,
                        payments.c.state == payment.state.value,
                    )
                    .values(**values)
                )
                if updated.rowcount != 1:
                    raise _Lost  # nothing of this transaction stays, the inbox row included
                changed = await _get(connection, payment.payment_id)
                assert changed is not None
                announced = state_event(changed)
                if announced is not None:
                    await enqueue(connection, [announced])
        except _Lost:
            return None
        self._on_commit()
        return changed

    async def announce(self, payment: Payment, message_id: str) -> None:
        announced = state_event(payment)
        if announced is None:
            return
        async with self._database.writing() as connection:
            if message_id and not await first_time(connection, self._inbox, message_id):
                return
            await enqueue(connection, [announced])
        self._on_commit()

    async def pending_since(self, before: datetime, limit: int) -> Sequence[Payment]:
        async with self._database.engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(payments)
                    .where(
                        payments.c.state == PaymentState.PENDING.value,
                        payments.c.update_us < to_micros(before),
                    )
                    .order_by(payments.c.update_us)
                    .limit(limit)
                )
            ).all()
        return [_payment(row._mapping) for row in rows]

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Payment], int]:
        condition = [payments.c.customer == customer] if customer else []
        async with self._database.engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(payments)
                    .where(*condition)
                    .order_by(payments.c.create_us.desc(), payments.c.id)
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
            total = (
                await connection.execute(
                    sa.select(sa.func.count()).select_from(payments).where(*condition)
                )
            ).scalar_one()
        return [_payment(row._mapping) for row in rows], int(total)


async def _get(connection: AsyncConnection, payment_id: str) -> Payment | None:
    row = (await connection.execute(sa.select(payments).where(payments.c.id == payment_id))).first()
    return _payment(row._mapping) if row else None


def _payment(row: Any) -> Payment:
    return Payment(
        payment_id=row["id"],
        order=row["order_name"],
        customer=row["customer"],
        amount=Money.from_total_nanos(row["currency"], row["amount_nanos"]),
        payment_method=row["payment_method"],
        state=PaymentState(row["state"]),
        create_time=from_micros(row["create_us"]),
        update_time=from_micros(row["update_us"]),
        decline_reason=row["decline_reason"],
        provider_reference=row["provider_reference"],
        void_reason=row["void_reason"],
        attempts=row["attempts"],
    )
