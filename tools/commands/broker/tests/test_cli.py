"""tools/broker against a real broker (fresh vhost): list the fleet's queues, peek a DLQ, move
a dead letter back and see it handled, replay a stream (or make a consumer re-read it); refuse
an unreachable broker."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.wrappers_pb2 import StringValue

from emporium.orders.v1 import order_events_pb2, orders_service_pb2
from emporium.payments.v1.payment_messages_pb2 import ChargePayment
from libs.messaging.broker import BrokerOptions
from libs.messaging.consumer import Delivery, WorkConsumer
from libs.messaging.envelope import command, event
from libs.messaging.offsets import load_offset, store_offset
from libs.messaging.publisher import Publisher
from libs.messaging.schema import messaging_migration
from libs.messaging.topology import Topology, WorkQueue
from libs.storage.database import Database
from libs.storage.transaction import Transaction
from libs.testing.databases import sqlite_url
from tools.commands.broker.fleet import FLEET

WORK = WorkQueue("cli.work", max_deliveries=2, retry_delays=(0.05,))


async def broker_cli(url: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.commands.broker",
        "--url",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return await process.wait(), output.decode()


async def test_dead_letter_is_peeked_and_moved_back(amqp_url: str) -> None:
    options = BrokerOptions(amqp_url)
    topology = Topology(work_queues=(WORK,))
    broken = True
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        if broken:
            raise RuntimeError("a bug, fixed later")
        handled.append(delivery.body(ChargePayment).order)

    consumer = WorkConsumer(options, topology, WORK, handler, name="cli-test")
    consumer.start()
    publisher = Publisher(options, topology)
    await publisher.start()
    message = command(WORK.name, ChargePayment(order="orders/parcel"))
    await publisher.publish(message)
    await publisher.close()
    await asyncio.wait_for(consumer.wait_until(lambda: consumer.dead_lettered == 1), 10)

    code, out = await broker_cli(amqp_url, "peek", f"{WORK.name}.dlq")
    assert code == 0, out
    assert message.message_id in out
    assert 'order: "orders/parcel"' in out
    assert "dead-lettered: failed 2 attempts; last: RuntimeError('a bug, fixed later')" in out
    assert "1 message(s) shown" in out

    broken = False
    code, out = await broker_cli(amqp_url, "requeue", WORK.name)
    assert code == 0, out
    assert f"moved 1 message(s) from {WORK.name}.dlq back to {WORK.name}" in out
    await asyncio.wait_for(consumer.wait_until(lambda: handled == ["orders/parcel"]), 10)
    await consumer.stop()


async def test_queues_lists_the_fleet_with_depths(amqp_url: str) -> None:
    publisher = Publisher(BrokerOptions(amqp_url), FLEET)
    await publisher.start()  # declares every queue and stream of the fleet
    await publisher.publish(command("payments.charge", StringValue(value="waiting")))
    await publisher.close()
    code, out = await broker_cli(amqp_url, "queues")
    assert code == 0, out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["payments.charge"] == ["work", "1", "0"]
    assert rows["payments.charge.dlq"] == ["dead", "letters", "0", "0"]
    assert rows["orders.events"][0] == "stream"


async def test_queues_counts_the_consumers_of_a_stream(amqp_url: str) -> None:
    publisher = Publisher(BrokerOptions(amqp_url), FLEET)
    await publisher.start()
    await publisher.close()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=10)  # a stream needs a prefetch to be read
        stream = await channel.get_queue("orders.events", ensure=False)
        await stream.consume(_ignore, arguments={"x-stream-offset": "next"})
        code, out = await broker_cli(amqp_url, "queues")
    finally:
        await connection.close()
    assert code == 0, out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    # A passive declare reports 0 consumers for a stream; the broker's own count says 1.
    assert rows["orders.events"] == ["stream", "0", "1"]


async def _ignore(message: AbstractIncomingMessage) -> None:
    await message.ack()


async def test_replay_prints_a_stream_from_an_offset(amqp_url: str) -> None:
    publisher = Publisher(BrokerOptions(amqp_url), FLEET)
    await publisher.start()
    for number in range(3):
        order = orders_service_pb2.Order(name=f"orders/o{number}")
        await publisher.publish(event("orders", order_events_pb2.OrderCreated(order=order)))
    await publisher.close()
    code, out = await broker_cli(amqp_url, "replay", "orders.events", "--from", "1", "--idle", "1")
    assert code == 0, out
    assert "orders/o0" not in out
    assert _lines_with(out, lambda line: line.startswith("offset ")) == ["offset 1", "offset 2"]
    assert 'order { name: "orders/o2" }' in out


def _lines_with(output: str, keep: Callable[[str], bool]) -> list[str]:
    return [" ".join(line.split()[:2]) for line in output.splitlines() if keep(line)]


async def test_an_unreachable_broker_is_refused_clearly() -> None:
    code, out = await broker_cli("amqp://guest:secret@127.0.0.1:1/", "queues")
    assert code == 2
    assert "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/" in out
    assert "secret" not in out


async def test_replay_for_a_consumer_resets_its_stored_offset(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    database = Database(url)
    await database.migrate([messaging_migration(1)])

    async def store(tx: Transaction) -> None:
        await store_offset(tx, "notifications", "orders.events", 41)

    async def stored(tx: Transaction) -> int | None:
        return await load_offset(tx, "notifications", "orders.events")

    await database.transaction(store)
    # The broker is not needed: the consumer's database is what changes.
    unreachable = "amqp://guest:guest@127.0.0.1:1/"
    replay = ("replay", "orders.events", "--consumer", "notifications", "--database", url)
    code, out = await broker_cli(unreachable, *replay, "--from", "7")
    assert code == 0, out
    assert "notifications will re-read orders.events from 7" in out
    assert await database.transaction(stored, write=False) == 6  # handled up to 6
    code, out = await broker_cli(unreachable, *replay, "--from", "first")
    assert code == 0, out
    assert await database.transaction(stored, write=False) is None
    await database.dispose()
