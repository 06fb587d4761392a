"""Acceptance: restart the broker while 20,000 messages go out through the outbox with
publisher confirms. Every message is consumed (lost = 0) and the duplicates the restart causes
leave no doubled effect. A private broker node, so the restart disturbs no other test (and it
runs the one Erlang scheduler a private node gets by default)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.wrappers_pb2 import StringValue

from libs.messaging.broker import BrokerOptions
from libs.messaging.consumer import Delivery, WorkConsumer
from libs.messaging.local_broker import LocalBroker
from libs.messaging.outbox import OutboxRelay
from libs.messaging.publisher import Publisher
from libs.messaging.schema import messaging_migration
from libs.messaging.tests.kit import (
    apply_once,
    command,
    effect_ids,
    effects_table,
    enqueued,
    outbox_message_ids,
    unsent_count,
)
from libs.messaging.topology import Topology, WorkQueue
from libs.storage.database import Database, Migration
from libs.testing.databases import sqlite_url

MESSAGES = 20_000
WORK = WorkQueue("kit.durable", retry_delays=(0.1,))
TOPOLOGY = Topology(work_queues=(WORK,))


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[LocalBroker]:
    node = LocalBroker(tmp_path / "rabbitmq", name="emporium-test")
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
        node.remove()


async def test_a_private_node_runs_one_scheduler_unless_told_otherwise(
    broker: LocalBroker,
) -> None:
    # It shares the machine's cores with the fleet it serves (LocalBroker's docstring).
    online = await broker.ctl("eval", "erlang:system_info(schedulers_online).")
    assert online.strip() == "1"


async def test_broker_restart_loses_nothing_and_doubles_nothing(
    broker: LocalBroker, tmp_path: Path
) -> None:
    options = BrokerOptions(broker.url, heartbeat=5, reconnect_interval=0.5, publish_timeout=2)
    producer_db = Database(sqlite_url(tmp_path))
    await producer_db.migrate([messaging_migration(1)])
    consumer_db = Database(sqlite_url(tmp_path))
    await consumer_db.migrate([messaging_migration(1), Migration(2, "effects", effects_table)])

    await enqueued(producer_db, [command(WORK.name, f"m{i}") for i in range(MESSAGES)])

    applied = 0
    all_applied = asyncio.Event()

    async def apply(message_id: str) -> None:
        nonlocal applied
        if await apply_once(consumer_db, "sink", message_id):
            applied += 1
            if applied == MESSAGES:
                all_applied.set()

    async def handler(delivery: Delivery) -> None:
        delivery.body(StringValue)
        await apply(delivery.message_id)

    publisher = Publisher(options, TOPOLOGY)
    await publisher.start()
    relay = OutboxRelay(producer_db, publisher, poll_interval=0.2)
    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="sink", prefetch=200)
    consumer.start()
    relay.start()
    await asyncio.wait_for(relay.wait_until_published(MESSAGES // 4), 120)
    await broker.restart()
    await asyncio.wait_for(relay.wait_until_published(MESSAGES), 300)
    await asyncio.wait_for(all_applied.wait(), 300)
    await relay.stop()
    await consumer.stop()
    await publisher.close()

    unsent = await unsent_count(producer_db)
    ids = await outbox_message_ids(producer_db)
    rows = await effect_ids(consumer_db)
    assert unsent == 0
    assert set(rows) == ids  # lost = 0
    assert len(rows) == len(ids) == MESSAGES  # no doubled effect
    assert consumer.sessions >= 2  # the consumer really lived through the restart
