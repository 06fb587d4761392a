"""PaymentRepository on SQLAlchemy async core (SQLite or PostgreSQL), with the outbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from emporium.payments.v1 import payment_messages_pb2 as messages
from libs.messaging.envelope import event
from libs.messaging.inbox import first_time
from libs.messaging.outbox import enqueue
from libs.messaging.schema import messaging_migration
from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from libs.storage.database import Database, creating_tables
from libs.storage.timestamps import from_micros, now_micros
from services.payments.domain.model import ChargeOutcome, ChargeRequest, Payment, PaymentState

DOMAIN_EVENTS = "payments"
INBOX = "payments.charge"

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
)


MIGRATIONS = (creating_tables(1, "payments", metadata), messaging_migration(2))


class SqlPaymentRepository:
    def __init__(self, database: Database, on_commit: Callable[[], None] = lambda: None) -> None:
        self._database = database
        self._on_commit = on_commit  # wakes the outbox relay

    async def get(self, payment_id: str) -> Payment | None:
        async with self._database.engine.connect() as connection:
            return await _get(connection, payment_id)

    async def open(self, request: ChargeRequest) -> Payment:
        existing = await self.get(request.payment_id)
        if existing is not None:
            return existing
        now = now_micros()
        async with self._database.writing("payments") as connection:
            raced = await _get(connection, request.payment_id)
            if raced is not None:
                return raced
            await connection.execute(
                payments.insert().values(
                    id=request.payment_id,
                    order_name=request.order,
                    customer=request.customer,
                    currency=request.amount.currency_code,
                    amount_nanos=request.amount.total_nanos,
                    payment_method=request.payment_method,
                    state=PaymentState.PENDING.value,
                    decline_reason="",
                    provider_reference="",
                    create_us=now,
                    update_us=now,
                )
            )
            created = await _get(connection, request.payment_id)
        assert created is not None
        return created

    async def settle(self, payment: Payment, outcome: ChargeOutcome, message_id: str) -> Payment:
        state = PaymentState.SUCCEEDED if outcome.approved else PaymentState.FAILED
        async with self._database.writing("payments") as connection:
            current = await _get(connection, payment.payment_id)
            assert current is not None
            if not await first_time(connection, INBOX, message_id) or (
                current.state is not PaymentState.PENDING
            ):
                return current
            await connection.execute(
                payments.update()
                .where(payments.c.id == payment.payment_id)
                .values(
                    state=state.value,
                    decline_reason=outcome.decline_reason,
                    provider_reference=outcome.reference,
                    update_us=now_micros(),
                )
            )
            body: messages.PaymentSucceeded | messages.PaymentFailed = (
                messages.PaymentSucceeded(
                    payment=payment.name, order=payment.order, amount=payment.amount.to_message()
                )
                if outcome.approved
                else messages.PaymentFailed(
                    payment=payment.name, order=payment.order, reason=outcome.decline_reason
                )
            )
            await enqueue(connection, [event(DOMAIN_EVENTS, body, correlation_id=payment.order)])
            settled = await _get(connection, payment.payment_id)
        self._on_commit()
        assert settled is not None
        return settled

    async def set_state(self, payment: Payment, state: PaymentState) -> Payment:
        async with self._database.writing("payments") as connection:
            updated = await connection.execute(
                payments.update()
                .where(payments.c.id == payment.payment_id, payments.c.state == payment.state.value)
                .values(state=state.value, update_us=now_micros())
            )
            if updated.rowcount != 1:
                raise DomainError(
                    ErrorKind.ABORTED,
                    "CONCURRENT_MODIFICATION",
                    f"{payment.name} changed meanwhile; read it again",
                )
            changed = await _get(connection, payment.payment_id)
        assert changed is not None
        return changed

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
    )
