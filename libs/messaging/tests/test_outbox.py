"""The outbox relay on SQLite and PostgreSQL (a recording publisher, no broker): rows published
in order and marked sent, failures left for the next round, replicas sharing the outbox on
PostgreSQL without publishing a row twice, the backlog gauge's query and pruning."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import aio_pika
import pytest

from libs.messaging.outbox import OutboxRelay
from libs.messaging.publisher import Publisher, PublishFailed
from libs.messaging.schema import messaging_migration
from libs.messaging.tests.kit import command, enqueued, unsent_count
from libs.storage.database import Database
from libs.storage.transaction import Transaction


class RecordingPublisher:
    """Confirms every message except those it is told to refuse; `delay` keeps a batch in
    flight so that two relays overlap."""

    def __init__(self, delay: float = 0.0) -> None:
        self.published: list[str] = []
        self.refuse: set[str] = set()
        self.delay = delay

    async def publish_message(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        *,
        trace_context: dict[str, str],
    ) -> None:
        await asyncio.sleep(self.delay)
        if message.message_id in self.refuse:
            raise PublishFailed(f"refused {message.message_id}")
        self.published.append(str(message.message_id))


def relay(database: Database, publisher: RecordingPublisher, **options: Any) -> OutboxRelay:
    return OutboxRelay(database, cast(Publisher, publisher), **options)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await db.migrate([messaging_migration(1)])
    yield db
    await db.dispose()


async def test_rows_are_published_in_order_and_marked_sent(database: Database) -> None:
    messages = [command("kit.work", f"m{i}", message_id=f"m{i}") for i in range(7)]
    await enqueued(database, messages)
    publisher = RecordingPublisher()
    relaying = relay(database, publisher, batch_size=5)
    assert await relaying.relay_once() == (5, 0)
    assert await relaying.relay_once() == (2, 0)
    assert await relaying.relay_once() == (0, 0)
    assert publisher.published == [f"m{i}" for i in range(7)]
    assert await unsent_count(database) == 0
    assert relaying.published == 7


async def test_a_row_that_failed_to_publish_stays_for_the_next_round(database: Database) -> None:
    await enqueued(database, [command("kit.work", f"m{i}", message_id=f"m{i}") for i in range(4)])
    publisher = RecordingPublisher()
    publisher.refuse = {"m1", "m2"}
    relaying = relay(database, publisher)
    assert await relaying.relay_once() == (2, 2)
    assert await unsent_count(database) == 2
    publisher.refuse.clear()
    assert await relaying.relay_once() == (2, 0)
    assert publisher.published == ["m0", "m3", "m1", "m2"]
    assert await unsent_count(database) == 0


@pytest.mark.postgres
async def test_replicas_share_the_outbox_without_publishing_a_row_twice(
    postgres_url: str,
) -> None:
    database = Database(postgres_url)
    await database.migrate([messaging_migration(1)])
    try:
        count = 300
        await enqueued(
            database, [command("kit.work", f"m{i}", message_id=f"m{i}") for i in range(count)]
        )
        publisher = RecordingPublisher(delay=0.01)
        relays = [relay(database, publisher, batch_size=20) for _ in range(3)]

        async def drain(relaying: OutboxRelay) -> None:
            while (await relaying.relay_once())[0]:
                pass

        await asyncio.gather(*(drain(r) for r in relays))
        assert sorted(publisher.published) == sorted(f"m{i}" for i in range(count))
        assert all(r.published for r in relays)  # each claimed its share (SKIP LOCKED)
        assert await unsent_count(database) == 0
    finally:
        await database.dispose()


async def test_the_backlog_is_observed_and_sent_rows_are_pruned(database: Database) -> None:
    await enqueued(database, [command("kit.work", "a"), command("kit.work", "b")])
    publisher = RecordingPublisher()
    relaying = relay(database, publisher, retention_seconds=0)
    await relaying.observe_backlog()  # reads count and oldest without failing
    await relaying.relay_once()
    await relaying.observe_backlog()
    await enqueued(database, [command("kit.work", "c")])
    await asyncio.sleep(0.001)
    await relaying.prune()

    async def rows(tx: Transaction) -> list[tuple[str, bool]]:
        found = await tx.fetch("SELECT message_id, sent_us FROM messaging_outbox")
        return [(row["message_id"], row["sent_us"] is not None) for row in found]

    remaining = await database.transaction(rows, write=False)
    assert [sent for _, sent in remaining] == [False]  # the sent ones went, the unsent stays
