"""Acceptance: on a three-node RabbitMQ cluster (private nodes on this machine), the node that
leads the work queue is killed half-way through 2,000 messages sent through the outbox with
confirms and consumed with the inbox. Nothing is lost, nothing is applied twice, and the flow
goes on through the other nodes. One cluster for the module: starting nodes takes seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.messaging.broker import BrokerOptions
from libs.messaging.consumer import Delivery, StreamConsumer, WorkConsumer
from libs.messaging.envelope import Outgoing
from libs.messaging.local_broker import LocalCluster
from libs.messaging.outbox import OutboxRelay
from libs.messaging.publisher import Publisher
from libs.messaging.schema import messaging_migration
from libs.messaging.tests.kit import (
    Parcel,
    apply_once,
    effect_ids,
    effects_table,
    enqueued,
    parcel,
    parcel_name,
    unsent_count,
)
from libs.messaging.topology import (
    COMMANDS_EXCHANGE,
    EVENTS_EXCHANGE,
    EventStream,
    Topology,
    WorkQueue,
)
from libs.storage.database import Database, Migration
from libs.testing.broker import running_cluster
from libs.testing.databases import sqlite_url

MESSAGES = 2_000
EVENTS = 100
WORK = WorkQueue("kit.replicated", accepts=(Parcel,), retry_delays=(0.1,))
STREAM = EventStream("kit.replicated-events", routing_keys=("kit.#",), accepts=(Parcel,))
TOPOLOGY = Topology(work_queues=(WORK,), streams=(STREAM,))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


def commands(start: int, stop: int) -> list[Outgoing]:
    return [
        Outgoing(COMMANDS_EXCHANGE, WORK.name, parcel(f"p{i}", i + 1), message_id=f"m{i}")
        for i in range(start, stop)
    ]


async def test_killing_the_queue_leader_loses_nothing_and_doubles_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    replicated = BrokerOptions(cluster.url, replicas=3)
    declaring = Publisher(replicated, TOPOLOGY)
    await declaring.start()
    await declaring.close()
    nodes = sorted(node.node for node in cluster.nodes)
    assert await cluster.members(WORK.name) == nodes
    assert await cluster.members(WORK.dead_letter_queue) == nodes
    assert await cluster.members(STREAM.name) == nodes
    leader = await cluster.leader(WORK.name)
    # The leader's address first: publisher and consumer both start on the node that dies.
    addresses = [leader.url] + [node.url for node in cluster.nodes if node is not leader]
    options = BrokerOptions(
        ",".join(addresses), replicas=3, heartbeat=5, reconnect_interval=0.2, publish_timeout=5
    )

    producer_db = Database(sqlite_url(tmp_path))
    await producer_db.migrate([messaging_migration(1)])
    consumer_db = Database(sqlite_url(tmp_path))
    await consumer_db.migrate([messaging_migration(1), Migration(2, "effects", effects_table)])
    applied = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal applied
        delivery.body(Parcel)
        if await apply_once(consumer_db, "sink", delivery.message_id):
            applied += 1

    publisher = Publisher(options, TOPOLOGY)
    await publisher.start()
    relay = OutboxRelay(producer_db, publisher, batch_size=200, poll_interval=0.2)
    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="sink", prefetch=100)
    consumer.start()
    await consumer.consuming.wait()
    for i in range(EVENTS):  # kept by the stream's replicas through the kill
        await publisher.publish(Outgoing(EVENTS_EXCHANGE, "kit.parcel", parcel(f"e{i}", 1)))
    relay.start()

    await enqueued(producer_db, commands(0, MESSAGES // 2))
    relay.notify()
    await asyncio.wait_for(consumer.wait_until(lambda: applied >= MESSAGES // 4), 60)
    await leader.kill()
    # The second half is written while the cluster has lost its leader node.
    await enqueued(producer_db, commands(MESSAGES // 2, MESSAGES))
    relay.notify()
    await asyncio.wait_for(relay.wait_until_published(MESSAGES), 120)
    await asyncio.wait_for(consumer.wait_until(lambda: applied == MESSAGES), 120)

    events: list[str] = []

    async def read(delivery: Delivery) -> None:
        events.append(parcel_name(delivery.body(Parcel)))

    reader = StreamConsumer(options, TOPOLOGY, STREAM, read, name="reader", database=consumer_db)
    reader.start()
    await asyncio.wait_for(reader.wait_for_position(EVENTS - 1), 60)
    await reader.stop()
    await relay.stop()
    await consumer.stop()
    await publisher.close()

    unsent = await unsent_count(producer_db)
    rows = await effect_ids(consumer_db)
    assert unsent == 0
    assert sorted(rows) == sorted(f"m{i}" for i in range(MESSAGES))  # each exactly once
    assert consumer.sessions >= 2  # it lost its node and resumed on another
    assert consumer.dead_lettered == 0
    assert events == [f"e{i}" for i in range(EVENTS)]
    new_leader = await cluster.leader(WORK.name)
    assert new_leader is not leader and new_leader.running
