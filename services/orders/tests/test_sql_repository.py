"""The SQL repository on SQLite and on PostgreSQL: a create racing its own retry, guarded saves
with the inbox, the statements each step of the order path costs (issue 12), and the move of
request ids onto the order's row for databases made before it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.schema import metadata as messaging_metadata
from libs.money import Money
from libs.storage.database import Database, Migration
from libs.storage.transaction import Transaction
from services.orders.adapters.order_messages import OrderMessages
from services.orders.adapters.sql_repository import MIGRATIONS, SqlOrderRepository
from services.orders.api.mapping import order_message
from services.orders.domain.model import (
    MessageKind,
    Order,
    OrderLine,
    OrderMessage,
    OrderState,
    PaymentState,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
INBOX = "orders.payment-results"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate(MIGRATIONS)
    yield database
    await database.dispose()


@pytest.fixture
def repository(database: Database) -> SqlOrderRepository:
    return SqlOrderRepository(database, OrderMessages(order_message), inbox=INBOX)


def new_order() -> Order:
    return Order(
        uuid.uuid4().hex,
        "customers/ann",
        (OrderLine("mug", 2, Money("EUR", 8, 0), "Mug"),),
        OrderState.PENDING_PAYMENT,
        "inventory/reservations/r1",
        NOW,
        NOW,
        payment_deadline=NOW + timedelta(minutes=10),
    )


def created(order: Order) -> list[OrderMessage]:
    return [
        OrderMessage(MessageKind.ORDER_CREATED, order),
        OrderMessage(MessageKind.AUTHORIZE_PAYMENT, order),
    ]


def next_of(order: Order, state: OrderState, **changes: object) -> Order:
    return dataclasses.replace(
        order,
        state=state,
        version=order.version + 1,
        update_time=order.update_time + timedelta(seconds=1),
        **changes,  # type: ignore[arg-type]
    )


async def count(database: Database, table: str) -> int:
    async def counted(tx: Transaction) -> int:
        row = await tx.fetchrow(f"SELECT count(*) FROM {table}")
        assert row is not None
        return int(row[0])

    return await database.transaction(counted, write=False)


async def test_a_create_racing_its_retry_answers_with_the_winner_and_sends_once(
    repository: SqlOrderRepository, database: Database
) -> None:
    first, second = new_order(), new_order()
    winner, again = await asyncio.gather(
        repository.create(first, "request-1", "print", created(first)),
        repository.create(second, "request-1", "print", created(second)),
    )
    assert again == winner and winner.order_id in (first.order_id, second.order_id)
    assert await repository.by_request_id("request-1") == (winner, "print")
    assert await repository.get(winner.order_id) == winner
    assert await count(database, "orders") == 1
    assert await count(database, "order_versions") == 1
    assert await count(database, "messaging_outbox") == 2  # the loser sent nothing


async def test_a_save_from_a_stale_read_loses_and_leaves_no_trace(
    repository: SqlOrderRepository, database: Database
) -> None:
    order = new_order()
    await repository.create(order, "request-1", "print", created(order))
    authorized = next_of(order, OrderState.AUTHORIZED, payment_state=PaymentState.AUTHORIZED)
    assert await repository.save(order, authorized, [])
    cancelling = next_of(order, OrderState.CANCELLING, cancel_reason="changed my mind")
    void = [OrderMessage(MessageKind.VOID_PAYMENT, cancelling)]
    assert not await repository.save(order, cancelling, void, "message-1")
    assert await repository.get(order.order_id) == authorized
    assert await count(database, "messaging_outbox") == 2
    assert await count(database, "messaging_inbox") == 0  # rolled back with the lost update
    assert await repository.versions(order.order_id, 0) == [order, authorized]


async def test_a_message_handled_before_changes_nothing(
    repository: SqlOrderRepository, database: Database
) -> None:
    order = new_order()
    await repository.create(order, "request-1", "print", created(order))
    confirmed = next_of(order, OrderState.CONFIRMED)
    capture = [OrderMessage(MessageKind.CAPTURE_PAYMENT, confirmed)]
    assert await repository.save(order, confirmed, capture, "message-1")
    captured = next_of(confirmed, OrderState.CONFIRMED, payment_state=PaymentState.CAPTURED)
    assert await repository.save(confirmed, captured, [], "message-1")  # a redelivery
    assert await repository.get(order.order_id) == confirmed
    assert await count(database, "messaging_outbox") == 3
    assert await repository.versions(order.order_id, 1) == [confirmed]


async def test_each_step_of_the_order_path_costs_its_statements_and_no_more(
    repository: SqlOrderRepository, database: Database
) -> None:
    """Issue 12: what orders sends per confirmed order (BEGIN and COMMIT not counted)."""

    async def statements(step: object) -> int:
        before = database.statements
        await step  # type: ignore[misc]
        return database.statements - before

    order = new_order()
    assert await statements(repository.by_request_id("request-1")) == 1
    # the order, its first version, the outbox rows (one statement for both messages)
    assert await statements(repository.create(order, "request-1", "print", created(order))) == 3
    assert await statements(repository.get(order.order_id)) == 1
    authorized = next_of(order, OrderState.AUTHORIZED, payment_state=PaymentState.AUTHORIZED)
    assert await statements(repository.save(order, authorized, [])) == 2  # the order, a version
    confirmed = next_of(authorized, OrderState.CONFIRMED)
    kinds = (MessageKind.ORDER_CONFIRMED, MessageKind.CAPTURE_PAYMENT)
    messages = [OrderMessage(kind, confirmed) for kind in kinds]
    # the inbox, the order, a version, the outbox rows
    assert await statements(repository.save(authorized, confirmed, messages, "message-1")) == 4
    captured = next_of(confirmed, OrderState.CONFIRMED, payment_state=PaymentState.CAPTURED)
    assert await statements(repository.save(confirmed, captured, [], "message-2")) == 3


# orders and its request ids as migrations 1 to 6 left them (before migration 7).
_OLD = sa.MetaData()
sa.Table(
    "orders",
    _OLD,
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
    sa.Column("deadline_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_orders_state_deadline", "state", "deadline_us"),
    sa.Index("ix_orders_state_update", "state", "update_us"),
)
sa.Table(
    "order_versions",
    _OLD,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("snapshot", sa.Text, nullable=False),
)
sa.Table(
    "order_requests",
    _OLD,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False),
)


async def test_request_ids_move_onto_the_orders_of_an_older_database(database_url: str) -> None:
    async def before_7(connection: AsyncConnection) -> None:
        await connection.run_sync(_OLD.create_all)
        await connection.run_sync(messaging_metadata.create_all)
        await connection.execute(
            sa.text(
                "INSERT INTO orders (id, customer, state, reservation, lines, cancel_reason,"
                " create_us, update_us, version, payment_state, deadline_us) VALUES"
                " ('o1', 'customers/ann', 'CONFIRMED', 'inventory/reservations/r1', '[]', '',"
                " 1, 2, 3, 'CAPTURED', 0)"
            )
        )
        await connection.execute(
            sa.text("INSERT INTO order_requests VALUES ('request-1', 'print', 'o1')")
        )

    async def nothing(_connection: AsyncConnection) -> None:
        pass

    old = Database(database_url)
    try:
        # A database as migrations 1 to 6 left it.
        await old.migrate(
            [Migration(v, "before 7", before_7 if v == 1 else nothing) for v in range(1, 7)]
        )
        assert await old.migrate(MIGRATIONS) == [7, 8]
        repository = SqlOrderRepository(old, OrderMessages(order_message), inbox=INBOX)
        found = await repository.by_request_id("request-1")
        assert found is not None
        order, fingerprint = found
        assert (order.order_id, order.state, order.version, fingerprint) == (
            "o1",
            OrderState.CONFIRMED,
            3,
            "print",
        )

        async def table_exists(tx: Transaction) -> bool:
            if tx.postgres:
                row = await tx.fetchrow("SELECT to_regclass('order_requests') IS NOT NULL")
            else:
                row = await tx.fetchrow(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'order_requests'"
                )
            return bool(row and row[0])

        assert not await old.transaction(table_exists, write=False)
        # its request id is taken: a create with it answers with the order it made
        retry = new_order()
        assert (await repository.create(retry, "request-1", "x", created(retry))).order_id == "o1"
    finally:
        await old.dispose()
