"""The messaging kit's metrics, recorded by the publisher, the consumers and the outbox relay.

Names follow OpenTelemetry's messaging conventions where they have one
(`messaging.client.sent.messages`, `messaging.client.consumed.messages`,
`messaging.process.duration`); the rest keep their namespace. Attributes are the destination
(the exchange, or the queue for the default exchange and for consumers), the routing key, and
the consumer's name: all bounded by the topology, never by message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from aio_pika.abc import AbstractConnection
from opentelemetry import metrics

from libs.messaging.broker import BrokerOptions, connect
from libs.telemetry.metrics import LocalCounter

log = logging.getLogger("emporium.messaging")

meter = metrics.get_meter("emporium.messaging")
SENT = LocalCounter(meter, "messaging.client.sent.messages", description="publishes attempted")
CONFIRMED = LocalCounter(
    meter, "messaging.client.confirmed.messages", description="publishes the broker confirmed"
)
CONSUMED = LocalCounter(
    meter, "messaging.client.consumed.messages", description="deliveries handed to a handler"
)
REDELIVERED = LocalCounter(
    meter,
    "messaging.client.redelivered.messages",
    description="deliveries that were not a message's first (retries and broker redeliveries)",
)
DEAD_LETTERED = LocalCounter(
    meter, "messaging.client.dead_lettered.messages", description="messages sent to the DLQ"
)
PROCESS_DURATION = meter.create_histogram(
    "messaging.process.duration", unit="s", description="handler time per delivery"
)
OUTBOX_BACKLOG = meter.create_gauge(
    "messaging.outbox.backlog", description="outbox rows not yet published"
)
OUTBOX_OLDEST_AGE = meter.create_gauge(
    "messaging.outbox.oldest_unsent.age", unit="s", description="age of the oldest unsent row"
)
CONSUMER_LAG = meter.create_gauge(
    "messaging.consumer.lag",
    unit="s",
    description="a stream consumer's delay: now minus the publish time of the message it last "
    "handled",
)

SYSTEM = "rabbitmq"


def publish_attributes(exchange: str, routing_key: str) -> dict[str, str]:
    return {
        "messaging.system": SYSTEM,
        # The default exchange routes to the queue the key names: that queue is the destination.
        "messaging.destination.name": exchange or routing_key,
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }


def consumer_attributes(queue: str, consumer: str) -> dict[str, str]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.consumer.group.name": consumer,
    }


class Handling:
    """One delivery's metrics: counted (and as a redelivery) when it starts; its handler time
    (decoding, handler, settling) recorded at `done`."""

    def __init__(self, attributes: dict[str, str], *, redelivered: bool) -> None:
        self._attributes = attributes
        self._started = time.perf_counter()
        CONSUMED.add(1, attributes)
        if redelivered:
            REDELIVERED.add(1, attributes)

    def done(self) -> None:
        PROCESS_DURATION.record(time.perf_counter() - self._started, self._attributes)

    @staticmethod
    def dead_lettered(attributes: dict[str, str]) -> None:
        DEAD_LETTERED.add(1, attributes)


def announce_consumer(attributes: dict[str, str]) -> None:
    """Exports a consumer's counters at 0 before its first message, so rules and dashboards
    that rate() them have a series from the start (call it once metrics are configured)."""
    for counter in (CONSUMED, REDELIVERED, DEAD_LETTERED):
        counter.add(0, attributes)


def record_lag(attributes: dict[str, str], published: datetime | None) -> None:
    """A stream consumer's lag after handling a message published at `published`."""
    if published is not None:
        if published.tzinfo is None:
            published = published.replace(tzinfo=UTC)
        CONSUMER_LAG.set(max(0.0, (datetime.now(UTC) - published).total_seconds()), attributes)


QUEUE_DEPTH = meter.create_gauge(
    "messaging.queue.depth", description="messages ready in a work queue or its DLQ"
)


class QueueDepths:
    """Reads the depth of the service's own work queues and their DLQs every `interval`
    seconds (a passive declare on a connection of its own) into `messaging.queue.depth`: the
    dashboard's queue panel and the DLQ alert read it."""

    def __init__(self, options: BrokerOptions, queues: Sequence[str], interval: float) -> None:
        self._options = options
        self._queues = list(queues)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.observed = asyncio.Event()  # set after each round that read every queue

    def start(self) -> None:
        if self._queues:
            self._task = asyncio.create_task(self._run(), name="queue-depths")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                connection = await connect(self._options)
                try:
                    while True:
                        await self.observe(connection)
                        await asyncio.sleep(self._interval)
                finally:
                    with contextlib.suppress(Exception):
                        await connection.close()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker is away or the queue not declared yet
                log.warning("queue depths unavailable: %s", error)
                await asyncio.sleep(self._interval)

    async def observe(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        try:
            for name in self._queues:
                queue = await channel.declare_queue(name, passive=True)
                depth = queue.declaration_result.message_count or 0
                attributes = {"messaging.system": SYSTEM, "messaging.destination.name": name}
                QUEUE_DEPTH.set(depth, attributes)
        finally:
            await channel.close()
        self.observed.set()
