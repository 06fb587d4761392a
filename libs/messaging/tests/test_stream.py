"""Event streams on a real broker: start positions, stored offsets, replay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from google.protobuf.wrappers_pb2 import StringValue
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.broker import BrokerOptions
from libs.messaging.consumer import Delivery, StartAt, StreamConsumer
from libs.messaging.envelope import Outgoing
from libs.messaging.inbox import first_time
from libs.messaging.schema import messaging_migration
from libs.messaging.tests.kit import Parcel, parcel, parcel_name, publisher
from libs.messaging.topology import EVENTS_EXCHANGE, EventStream, Topology
from libs.storage.database import Database, Migration
from libs.testing.databases import sqlite_url

STREAM = EventStream("kit.events", routing_keys=("kit.#",))
TOPOLOGY = Topology(streams=(STREAM,))
effects = sa.table("effects", sa.column("text", sa.String))


async def database(tmp_path: Path) -> Database:
    db = Database(sqlite_url(tmp_path))

    async def effects_table(connection: AsyncConnection) -> None:
        await connection.execute(sa.text("CREATE TABLE effects (text TEXT NOT NULL)"))

    await db.migrate([messaging_migration(1), Migration(2, "effects", effects_table)])
    return db


async def publish(options: BrokerOptions, *texts: str) -> None:
    async with publisher(options, TOPOLOGY) as pub:
        for text in texts:
            await pub.publish(Outgoing(EVENTS_EXCHANGE, "kit.happened", StringValue(value=text)))


class Reader:
    """A stream consumer whose effect is a row per event, deduplicated by the inbox."""

    def __init__(self, options: BrokerOptions, db: Database, start: StartAt) -> None:
        self.read: list[str] = []
        self.db = db
        self.consumer = StreamConsumer(
            options, TOPOLOGY, STREAM, self.handle, name="reader", database=db, start=start
        )

    async def handle(self, delivery: Delivery, connection: AsyncConnection) -> None:
        text = delivery.body(StringValue).value
        self.read.append(text)
        if await first_time(connection, "reader", delivery.message_id):
            await connection.execute(effects.insert().values(text=text))

    async def effects(self) -> list[str]:
        async with self.db.engine.connect() as connection:
            return [r[0] for r in await connection.execute(sa.select(effects.c.text))]


async def test_reads_from_first_and_resumes_after_its_stored_offset(
    amqp_url: str, tmp_path: Path
) -> None:
    options = BrokerOptions(amqp_url)
    db = await database(tmp_path)
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

    by_time = Reader(options, await database(tmp_path), boundary)
    by_offset = Reader(options, await database(tmp_path), 1)
    from_next = Reader(options, await database(tmp_path), "next")
    for reader in (by_time, by_offset, from_next):
        reader.consumer.start()
        await reader.consumer.consuming.wait()
    await publish(options, "new-2")
    for reader in (by_time, by_offset, from_next):
        await asyncio.wait_for(reader.consumer.wait_for_position(3), 10)
        await reader.consumer.stop()
    assert by_time.read == ["new-1", "new-2"]
    assert by_offset.read == ["old-2", "new-1", "new-2"]
    assert from_next.read == ["new-2"]


async def test_replay_rereads_everything_and_changes_nothing_twice(
    amqp_url: str, tmp_path: Path
) -> None:
    options = BrokerOptions(amqp_url)
    reader = Reader(options, await database(tmp_path), "first")
    await publish(options, *(f"e{i}" for i in range(10)))
    reader.consumer.start()
    await asyncio.wait_for(reader.consumer.wait_for_position(9), 10)
    await reader.consumer.replay("first")
    await asyncio.wait_for(reader.consumer.wait_for_position(9), 10)
    await reader.consumer.stop()
    assert reader.read == [f"e{i}" for i in range(10)] * 2
    assert sorted(await reader.effects()) == sorted(f"e{i}" for i in range(10))


async def test_invalid_events_are_skipped_before_the_handler(amqp_url: str, tmp_path: Path) -> None:
    options = BrokerOptions(amqp_url)
    stream = EventStream("kit.parcels", routing_keys=("kit.#",), accepts=(Parcel,))
    topology = Topology(streams=(stream,))
    seen: list[str] = []

    async def handle(delivery: Delivery, connection: AsyncConnection) -> None:
        seen.append(parcel_name(delivery.body(Parcel)))

    async with publisher(options, topology) as pub:
        for body in (parcel("", 1), StringValue(value="x"), parcel("good", 2)):
            await pub.publish(Outgoing(EVENTS_EXCHANGE, "kit.happened", body))
    consumer = StreamConsumer(
        options, topology, stream, handle, name="reader", database=await database(tmp_path)
    )
    consumer.start()
    await asyncio.wait_for(consumer.wait_for_position(2), 10)
    await consumer.stop()
    assert seen == ["good"]  # the invalid parcel and the other type never reached it
