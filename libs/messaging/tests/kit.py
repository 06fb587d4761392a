"""Small test seams for the messaging kit's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import sqlalchemy as sa
from buf.validate import validate_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import StringValue
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.broker import BrokerOptions
from libs.messaging.envelope import Outgoing
from libs.messaging.inbox import first_time
from libs.messaging.outbox import enqueue
from libs.messaging.publisher import Publisher
from libs.messaging.topology import COMMANDS_EXCHANGE, Topology
from libs.storage.database import Database
from libs.storage.transaction import Transaction


def command(queue: str, text: str, message_id: str | None = None) -> Outgoing:
    if message_id is None:
        return Outgoing(COMMANDS_EXCHANGE, queue, StringValue(value=text))
    return Outgoing(COMMANDS_EXCHANGE, queue, StringValue(value=text), message_id=message_id)


@asynccontextmanager
async def publisher(options: BrokerOptions, topology: Topology) -> AsyncIterator[Publisher]:
    started = Publisher(options, topology)
    await started.start()
    try:
        yield started
    finally:
        await started.close()


# What a consuming handler applies, one row per message it applied: the delivery tests count
# them to prove nothing was lost or applied twice.
async def effects_table(connection: AsyncConnection) -> None:
    # No unique key on purpose: only the inbox stands between a duplicate and a second row.
    await connection.execute(sa.text("CREATE TABLE effects (message_id TEXT NOT NULL)"))


async def apply_once(database: Database, consumer: str, message_id: str) -> bool:
    """The handler's effect and its inbox record in one transaction; False for a duplicate."""

    async def apply(tx: Transaction) -> bool:
        if not await first_time(tx, consumer, message_id):
            return False
        await tx.execute("INSERT INTO effects (message_id) VALUES ($1)", message_id)
        return True

    return await database.transaction(apply)


async def effect_ids(database: Database) -> list[str]:
    async def read(tx: Transaction) -> list[str]:
        return [row[0] for row in await tx.fetch("SELECT message_id FROM effects")]

    return await database.transaction(read, write=False)


async def enqueued(database: Database, messages: Sequence[Outgoing]) -> None:
    """Writes `messages` to the outbox in one transaction."""

    async def write(tx: Transaction) -> None:
        await enqueue(tx, messages)

    await database.transaction(write)


async def outbox_message_ids(database: Database) -> set[str]:
    async def read(tx: Transaction) -> set[str]:
        return {row[0] for row in await tx.fetch("SELECT message_id FROM messaging_outbox")}

    return await database.transaction(read, write=False)


async def unsent_count(database: Database) -> int:
    """Outbox rows the broker has not confirmed yet."""

    async def count(tx: Transaction) -> int:
        row = await tx.fetchrow("SELECT count(*) FROM messaging_outbox WHERE sent_us IS NULL")
        assert row is not None
        return int(row[0])

    return await database.transaction(count, write=False)


def _parcel_type() -> type[Message]:
    """`emporium.kit_test.Parcel {string name (non-empty); int64 weight (> 0)}`, built at
    import: a message with buf.validate rules that belongs to no service's contract."""
    file = descriptor_pb2.FileDescriptorProto(
        name="emporium/kit_test/parcel.proto",
        package="emporium.kit_test",
        syntax="proto3",
        dependency=["buf/validate/validate.proto"],
    )
    message = file.message_type.add(name="Parcel")
    field = descriptor_pb2.FieldDescriptorProto
    name = message.field.add(
        name="name", json_name="name", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL
    )
    name.options.Extensions[validate_pb2.field].string.min_len = 1
    weight = message.field.add(
        name="weight",
        json_name="weight",
        number=2,
        type=field.TYPE_INT64,
        label=field.LABEL_OPTIONAL,
    )
    weight.options.Extensions[validate_pb2.field].int64.gt = 0
    pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    pool.AddSerializedFile(file.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("emporium.kit_test.Parcel"))


Parcel = _parcel_type()


def parcel(name: str, weight: int) -> Message:
    return json_format.ParseDict({"name": name, "weight": str(weight)}, Parcel())


def parcel_name(message: Message) -> str:
    return str(json_format.MessageToDict(message).get("name", ""))
