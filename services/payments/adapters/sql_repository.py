"""PaymentRepository: each operation one transaction function handed to the database whole
(`Database.transaction`), the same SQL for SQLite and PostgreSQL, with the outbox and the inbox
in the transaction of the change; the tables are declared with SQLAlchemy for the migrations.

Every change is guarded by the state it was read in (a conditional UPDATE … RETURNING: a race
has one winner, and the winner gets the row it wrote without reading it again); a new payment
is settled by its key (INSERT … ON CONFLICT DO NOTHING). The events a change announces are
built before its transaction, which only writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.envelope import Outgoing
from libs.messaging.inbox import first_time
from libs.messaging.outbox import enqueue
from libs.messaging.schema import messaging_migration
from libs.money import Money
from libs.storage.database import Database, Migration, creating_tables
from libs.storage.timestamps import from_micros, now_micros, to_micros
from libs.storage.transaction import Row, Transaction, fetch_page
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
    # The reconciler's payments left PENDING (without it, every payment read each round).
    sa.Index("ix_payments_state_update", "state", "update_us"),
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


async def _reconciler_index(connection: AsyncConnection) -> None:
    await connection.execute(
        sa.text(
            "CREATE INDEX IF NOT EXISTS ix_payments_state_update ON payments (state, update_us)"
        )
    )


MIGRATIONS = (
    creating_tables(1, "payments", metadata),
    messaging_migration(2),
    Migration(3, "payments: authorize, capture, void", _authorize_capture_void),
    Migration(4, "payments: an index for the reconciler's pending payments", _reconciler_index),
)

_COLUMNS = (
    "id, order_name, customer, currency, amount_nanos, payment_method, state, decline_reason,"
    " provider_reference, create_us, update_us, void_reason, attempts"
)
_GET = f"SELECT {_COLUMNS} FROM payments WHERE id = $1"
_OPEN = (
    f"INSERT INTO payments ({_COLUMNS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    " ON CONFLICT (id) DO NOTHING"
)
_ATTEMPT = (
    "UPDATE payments SET attempts = attempts + 1, update_us = $2"
    f" WHERE id = $1 AND state = '{PaymentState.PENDING.value}' RETURNING {_COLUMNS}"
)
VOIDED_BEFORE_AUTHORIZED = "voided before it was authorized"


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
        row = await self._database.fetchrow(_GET, payment_id)
        return None if row is None else _payment(row)

    async def open(
        self, request: PaymentRequest, state: PaymentState, *, attempted: bool = False
    ) -> tuple[Payment, bool]:
        now = now_micros()
        created = Payment(
            payment_id=request.payment_id,
            order=request.order,
            customer=request.customer,
            amount=request.amount,
            payment_method=request.payment_method,
            state=state,
            create_time=from_micros(now),
            update_time=from_micros(now),
            void_reason=VOIDED_BEFORE_AUTHORIZED if state is PaymentState.VOIDED else "",
            attempts=1 if attempted and state is PaymentState.PENDING else 0,
        )
        announced = state_event(created)
        row = _row(created, now)

        async def open_(tx: Transaction) -> tuple[Payment, bool]:
            # The key settles a race with another replica: the loser reads the winner's row.
            if await tx.execute(_OPEN, *row) != 1:
                existing = await _get(tx, request.payment_id)
                assert existing is not None
                return existing, False
            if announced is not None:
                await enqueue(tx, [announced])
            return created, True

        payment, inserted = await self._database.transaction(open_)
        if inserted and announced is not None:
            self._on_commit()
        return payment, inserted

    async def attempt(self, payment: Payment) -> Payment | None:
        update_us = now_micros()

        async def attempt(tx: Transaction) -> Payment | None:
            row = await tx.fetchrow(_ATTEMPT, payment.payment_id, update_us)
            return None if row is None else _payment(row)

        return await self._database.transaction(attempt)

    async def transition(
        self,
        payment: Payment,
        state: PaymentState,
        *,
        reference: str | None = None,
        reason: str = "",
        message_id: str = "",
    ) -> Payment | None:
        update_us = now_micros()
        assignments = ["state = $3", "update_us = $4"]
        values: list[Any] = [payment.payment_id, payment.state.value, state.value, update_us]
        expected = dataclasses.replace(payment, state=state, update_time=from_micros(update_us))
        if reference is not None:
            values.append(reference)
            assignments.append(f"provider_reference = ${len(values)}")
            expected = dataclasses.replace(expected, provider_reference=reference)
        if state is PaymentState.DECLINED:
            values.append(reason)
            assignments.append(f"decline_reason = ${len(values)}")
            expected = dataclasses.replace(expected, decline_reason=reason)
        elif state in (PaymentState.VOIDED, PaymentState.REFUNDED):
            values.append(reason)
            assignments.append(f"void_reason = ${len(values)}")
            expected = dataclasses.replace(expected, void_reason=reason)
        update = (
            f"UPDATE payments SET {', '.join(assignments)}"
            f" WHERE id = $1 AND state = $2 RETURNING {_COLUMNS}"
        )
        # The event carries what this update writes (the state and its reason) and what never
        # changes (the payment, its order and amount): it is built before the transaction.
        announced = state_event(expected)

        async def move(tx: Transaction) -> tuple[Payment, bool]:
            if message_id and not await first_time(tx, self._inbox, message_id):
                current = await _get(tx, payment.payment_id)  # handled before: as it is
                assert current is not None
                return current, False
            row = await tx.fetchrow(update, *values)
            if row is None:
                raise _Lost  # nothing of this transaction stays, the inbox row included
            if announced is not None:
                await enqueue(tx, [announced])
            return _payment(row), True

        try:
            changed, moved = await self._database.transaction(move)
        except _Lost:
            return None
        if moved and announced is not None:
            self._on_commit()
        return changed

    async def announce(self, payment: Payment, message_id: str) -> None:
        announced = state_event(payment)
        if announced is None:
            return
        event: Outgoing = announced

        async def announce(tx: Transaction) -> bool:
            if message_id and not await first_time(tx, self._inbox, message_id):
                return False
            await enqueue(tx, [event])
            return True

        if await self._database.transaction(announce):
            self._on_commit()

    async def pending_since(self, before: datetime, limit: int) -> Sequence[Payment]:
        async def pending(tx: Transaction) -> list[Payment]:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM payments WHERE state = $1 AND update_us < $2"
                " ORDER BY update_us LIMIT $3",
                PaymentState.PENDING.value,
                to_micros(before),
                limit,
            )
            return [_payment(row) for row in rows]

        return await self._database.transaction(pending, write=False)

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Payment], int]:
        where, arguments = ("WHERE customer = $1", [customer]) if customer else ("", [])

        async def page(tx: Transaction) -> tuple[list[Payment], int]:
            rows, total = await fetch_page(
                tx,
                f"SELECT {_COLUMNS} FROM payments {where} ORDER BY create_us DESC, id",
                f"SELECT count(*) FROM payments {where}",
                arguments,
                limit=limit,
                offset=offset,
            )
            return [_payment(row) for row in rows], total

        return await self._database.transaction(page, write=False)


async def _get(tx: Transaction, payment_id: str) -> Payment | None:
    row = await tx.fetchrow(_GET, payment_id)
    return None if row is None else _payment(row)


def _row(payment: Payment, now: int) -> tuple[Any, ...]:
    """The values of `_COLUMNS` for a new payment."""
    return (
        payment.payment_id,
        payment.order,
        payment.customer,
        payment.amount.currency_code,
        payment.amount.total_nanos,
        payment.payment_method,
        payment.state.value,
        payment.decline_reason,
        payment.provider_reference,
        now,
        now,
        payment.void_reason,
        payment.attempts,
    )


def _payment(row: Row) -> Payment:
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
