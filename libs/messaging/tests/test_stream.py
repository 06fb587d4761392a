"""Event streams on a real broker: start positions, stored offsets, replay, and the consumer's
own inbox (a batch of deliveries: one inbox read, the handler for the new ones, one write
transaction for their ids and the offset). The database-facing tests run on SQLite and on
PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.protobuf.wrappers_pb2 import StringValue
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.broker import BrokerOptions
from libs.messaging.consumer import Delivery, PermanentFailure, StartAt, StreamConsumer
from libs.messaging.envelope import Outgoing
from libs.messaging.inbox import seen
from libs.messaging.offsets import load_offset
from libs.messaging.schema import messaging_migration
from libs.messaging.tests.kit import Parcel, parcel, parcel_name, publisher
from libs.messaging.topology import EVENTS_EXCHANGE, EventStream, Topology
from libs.storage.database import Database, Migration
from libs.storage.transaction import Transaction
from libs.testing.databases import sqlite_url

STREAM = EventStream("kit.events", routing_keys=("kit.#",))
TOPOLOGY = Topology(streams=(STREAM,))


async def effects_table(connection: AsyncConnection) -> None:
    await connection.execute(sa.text("CREATE TABLE effects (text TEXT NOT NULL)"))


async def migrated(url: str) -> Database:
    db = Database(url)
    await db.migrate([messaging_migration(1), Migration(2, "effects", effects_table)])
    return db


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await migrated(database_url)
    yield database
    await database.dispose()


async def publish(options: BrokerOptions, *texts: str | Outgoing) -> None:
    async with publisher(options, TOPOLOGY) as pub:
        for text in texts:
            await pub.publish(
                text
                if isinstance(text, Outgoing)
                else Outgoing(EVENTS_EXCHANGE, "kit.happened", StringValue(value=text))
            )


class Reader:
    """A stream consumer whose effect is a row per event (its own transaction: the handler is
    given no connection); the consumer's inbox keeps it from applying an event twice."""

    def __init__(
        self, options: BrokerOptions, db: Database, start: StartAt, *, prefetch: int = 100
    ) -> None:
        self.read: list[str] = []
        self.db = db
        self.consumer = StreamConsumer(
            options,
            TOPOLOGY,
            STREAM,
            self.handle,
            name="reader",
            database=db,
            start=start,
            prefetch=prefetch,
        )

    async def handle(self, delivery: Delivery) -> None:
        text = delivery.body(StringValue).value
        self.read.append(text)

        async def apply(tx: Transaction) -> None:
            await tx.execute("INSERT INTO effects (text) VALUES ($1)", text)

        await self.db.transaction(apply)

    async def effects(self) -> list[str]:
        async def read(tx: Transaction) -> list[str]:
            return [row["text"] for row in await tx.fetch("SELECT text FROM effects")]

        return await self.db.transaction(read, write=False)


async def test_reads_from_first_and_resumes_after_its_stored_offset(
    amqp_url: str, db: Database
) -> None:
    options = BrokerOptions(amqp_url)
    await publish(options, "a", "b", "c")
    reader = Reader(options, db, "first")
    reader.consumer.start()
    await asyncio.wait_for(reader.consumer.wait_for_position(2), 10)
    await reader.consumer.stop()
    assert reader.read == ["a", "b", "c"]

    await publish(options, "d")
    again = Reader(options, db, "first")
    again.consumer.start()
    await asyncio.wait_for(again.consumer.wait_for_position(3), 10)
    await again.consumer.stop()
    assert again.read == ["d"]  # resumed after offset 2, not from the start
    assert await again.effects() == ["a", "b", "c", "d"]


async def test_start_positions_next_offset_and_timestamp(amqp_url: str, tmp_path: Path) -> None:
    options = BrokerOptions(amqp_url)
    await publish(options, "old-1", "old-2")
    await asyncio.sleep(1.1)  # stream timestamps have one-second resolution
    boundary = datetime.now(UTC)
    await asyncio.sleep(1.1)
    await publish(options, "new-1")

    by_time = Reader(options, await migrated(sqlite_url(tmp_path)), boundary)
    by_offset = Reader(options, await migrated(sqlite_url(tmp_path)), 1)
    from_next = Reader(options, await migrated(sqlite_url(tmp_path)), "next")
    for reader in (by_time, by_offset, from_next):
        reader.consumer.start()
        await reader.consumer.consuming.wait()
    await publish(options, "new-2")
    for reader in (by_time, by_offset, from_next):
        await asyncio.wait_for(reader.consumer.wait_for_position(3), 10)
        await reader.consumer.stop()
        await reader.db.dispose()
    assert by_time.read == ["new-1", "new-2"]
    assert by_offset.read == ["old-2", "new-1", "new-2"]
    assert from_next.read == ["new-2"]


async def test_replay_rereads_everything_and_applies_nothing_twice(
    amqp_url: str, db: Database
) -> None:
    options = BrokerOptions(amqp_url)
    reader = Reader(options, db, "first")
    await publish(options, *(f"e{i}" for i in range(10)))
    reader.consumer.start()
    await asyncio.wait_for(reader.consumer.wait_for_position(9), 10)
    await reader.consumer.replay("first")
    await asyncio.wait_for(reader.consumer.wait_for_position(9), 10)
    await reader.consumer.stop()
    assert reader.consumer.handled == 20  # every event read twice,
    assert reader.read == [f"e{i}" for i in range(10)]  # handled once
    assert sorted(await reader.effects()) == sorted(f"e{i}" for i in range(10))


async def test_a_batch_is_one_inbox_read_and_one_write_and_drops_duplicates(
    amqp_url: str, db: Database
) -> None:
    options = BrokerOptions(amqp_url)
    events = [
        Outgoing(EVENTS_EXCHANGE, "kit.happened", StringValue(value=f"e{i}")) for i in range(60)
    ]
    # The outbox publishes at least once: the same message twice, even within one batch.
    await publish(options, *events[:30], events[29], events[5], *events[30:])
    reader = Reader(options, db, "first")
    reader.consumer.start()
    await asyncio.wait_for(reader.consumer.wait_for_position(61), 10)
    await reader.consumer.stop()
    assert reader.read == [f"e{i}" for i in range(60)]
    assert reader.consumer.handled == 62
    # Stored together: the offset of the last message and every id handled.
    assert reader.consumer.batches < 62 / 2

    async def stored(tx: Transaction) -> tuple[int | None, set[str]]:
        offset = await load_offset(tx, "reader", STREAM.name)
        return offset, await seen(tx, "reader", [e.message_id for e in events])

    offset, recorded = await db.transaction(stored, write=False)
    assert offset == 61
    assert recorded == {e.message_id for e in events}


async def test_a_failing_handler_keeps_what_came_before_and_rereads_from_there(
    amqp_url: str, db: Database
) -> None:
    options = BrokerOptions(amqp_url, reconnect_interval=0.1)
    reader = Reader(options, db, "first")
    handle = reader.handle
    failed: list[str] = []

    async def flaky(delivery: Delivery) -> None:
        text = delivery.body(StringValue).value
        if text == "c" and not failed:
            failed.append(text)
            raise RuntimeError("the mail server is away")
        if text == "x":
            raise PermanentFailure("no retry can fix this one")
        await handle(delivery)

    reader.consumer._handler = flaky
    await publish(options, "a", "b", "c", "x", "d")
    reader.consumer.start()
    await asyncio.wait_for(reader.consumer.wait_for_position(4), 10)
    await reader.consumer.stop()
    assert failed == ["c"]
    assert reader.read == ["a", "b", "c", "d"]  # a and b were kept, not handled again
    assert sorted(await reader.effects()) == ["a", "b", "c", "d"]
    assert reader.consumer.sessions >= 2  # it re-read from the stored offset


async def test_invalid_events_are_skipped_before_the_handler(amqp_url: str, tmp_path: Path) -> None:
    options = BrokerOptions(amqp_url)
    stream = EventStream("kit.parcels", routing_keys=("kit.#",), accepts=(Parcel,))
    topology = Topology(streams=(stream,))
    received: list[str] = []

    async def handle(delivery: Delivery) -> None:
        received.append(parcel_name(delivery.body(Parcel)))

    async with publisher(options, topology) as pub:
        for body in (parcel("", 1), StringValue(value="x"), parcel("good", 2)):
            await pub.publish(Outgoing(EVENTS_EXCHANGE, "kit.happened", body))
    database = await migrated(sqlite_url(tmp_path))
    consumer = StreamConsumer(options, topology, stream, handle, name="reader", database=database)
    consumer.start()
    await asyncio.wait_for(consumer.wait_for_position(2), 10)
    await consumer.stop()
    await database.dispose()
    assert received == ["good"]  # the invalid parcel and the other type never reached it
