"""Topology as code: the exchanges and queues a service needs, declared idempotently at start.

- Work queues are quorum queues. A failed message goes to a retry queue `<queue>.retry.<ms>`
  whose message TTL dead-letters it back (no delayed-message plugin needed); after
  `max_deliveries`, or at once on a permanent error, it is rejected into `<queue>.dlq`.
  The queue's `x-delivery-limit` is the backstop for a message that crashes its consumers.
- Commands go through the default exchange straight to the work queue they name (the routing
  key is the queue name; mandatory routing makes a missing queue an error), domain events to the
  topic exchange `emporium.events` (routing key `<domain>.<Event>`).
- Event streams are RabbitMQ streams bound to the events exchange: an immutable log that
  consumers read from an offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel

EVENTS_EXCHANGE = "emporium.events"
COMMANDS_EXCHANGE = ""  # the default exchange: routes to the queue named by the routing key
DEAD_LETTER_EXCHANGE = "emporium.dead-letter"


@dataclass(frozen=True)
class WorkQueue:
    name: str
    # (exchange, routing key) bindings: events this queue takes besides the commands
    # addressed to it by name.
    bindings: tuple[tuple[str, str], ...] = ()
    max_deliveries: int = 5
    retry_delays: tuple[float, ...] = (1.0, 5.0, 30.0)

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"

    def retry_queue(self, attempt: int) -> str:
        """The retry queue after failed delivery number `attempt` (1-based)."""
        return self.retry_queue_for(self.retry_delay(attempt))

    @property
    def retry_queues(self) -> list[str]:
        return [self.retry_queue_for(delay) for delay in sorted(set(self.retry_delays))]

    def retry_queue_for(self, delay: float) -> str:
        return f"{self.name}.retry.{_ms(delay)}"

    def retry_delay(self, attempt: int) -> float:
        return self.retry_delays[min(attempt, len(self.retry_delays)) - 1]


@dataclass(frozen=True)
class EventStream:
    name: str
    routing_keys: tuple[str, ...]
    max_age: str = "7D"


@dataclass(frozen=True)
class Topology:
    work_queues: tuple[WorkQueue, ...] = ()
    streams: tuple[EventStream, ...] = ()
    # Queues this service only publishes to still get declared, so that a publish before
    # their consumer's first start is routed, not returned.
    extra: tuple[Topology, ...] = field(default=())

    def all_work_queues(self) -> tuple[WorkQueue, ...]:
        return self.work_queues + tuple(q for t in self.extra for q in t.all_work_queues())

    def all_streams(self) -> tuple[EventStream, ...]:
        return self.streams + tuple(s for t in self.extra for s in t.all_streams())


async def declare(channel: AbstractChannel, topology: Topology) -> None:
    events = await channel.declare_exchange(EVENTS_EXCHANGE, ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, ExchangeType.DIRECT, durable=True)
    exchanges = {EVENTS_EXCHANGE: events}
    for work in topology.all_work_queues():
        dlq = await channel.declare_queue(
            work.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dead, routing_key=work.name)
        queue = await channel.declare_queue(
            work.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-dead-letter-routing-key": work.name,
                "x-delivery-limit": work.max_deliveries,
            },
        )
        for exchange, routing_key in work.bindings:
            await queue.bind(exchanges[exchange], routing_key=routing_key)
        for delay in sorted(set(work.retry_delays)):
            await channel.declare_queue(
                work.retry_queue_for(delay),
                durable=True,
                arguments={
                    "x-message-ttl": _ms(delay),
                    # The default exchange routes by queue name: straight back to the queue.
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": work.name,
                },
            )
    for stream in topology.all_streams():
        queue = await channel.declare_queue(
            stream.name,
            durable=True,
            arguments={"x-queue-type": "stream", "x-max-age": stream.max_age},
        )
        for routing_key in stream.routing_keys:
            await queue.bind(events, routing_key=routing_key)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
