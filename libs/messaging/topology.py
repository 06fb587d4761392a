"""Topology as code: the exchanges and queues a service needs, declared idempotently at start.

- Work queues, their retry queues and DLQs are quorum queues (replicated on a cluster), and
  their dead-lettering is at-least-once. A message the handler failed on goes to a retry queue
  `<queue>.retry.<ms>` whose message TTL dead-letters it back (no delayed-message plugin
  needed), carrying its attempt count in a header; after `max_deliveries` failed attempts, or
  at once when it is invalid or the handler raises PermanentFailure, it goes to `<queue>.dlq`
  with the reason in a header. Only the handler's own failures count: a redelivery after a
  consumer crash or a cut connection does not (the effect may have happened; the inbox
  absorbs the repeat). The queue's `x-delivery-limit` (`POISON_DELIVERY_LIMIT`, large) only
  stops a message that kills every consumer it reaches from looping for ever.
- Commands go through the default exchange straight to the work queue they name (the routing
  key is the queue name; mandatory routing makes a missing queue an error), domain events to the
  topic exchange named in the messaging contract (routing key `<domain>.<Event>`).
- Event streams are RabbitMQ streams bound to the events exchange: an immutable log that
  consumers read from an offset.
- On a cluster, `replicas` sets how many nodes hold each quorum queue and stream.

RabbitMQ never changes the arguments of an existing queue: declaring one with others (say an
older `x-delivery-limit`) is refused. `declare` then uses the queue as it is and logs a warning
naming it; `tools/broker renew QUEUE` re-creates it with the current arguments, keeping its
messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractQueue
from google.protobuf.message import Message

from emporium.messaging.v1 import messaging_pb2

# The shared exchanges, as proto/emporium/messaging/v1/messaging.proto names them.
_BROKER = messaging_pb2.DESCRIPTOR.GetOptions().Extensions[messaging_pb2.broker]
EVENTS_EXCHANGE: str = _BROKER.events_exchange
COMMANDS_EXCHANGE = ""  # the default exchange: routes to the queue named by the routing key
DEAD_LETTER_EXCHANGE: str = _BROKER.dead_letter_exchange
# Broker redeliveries (crashes, cut connections) of one message before RabbitMQ dead-letters
# it: a guard against a message that kills its consumers, far above any honest run of crashes.
POISON_DELIVERY_LIMIT = 50

log = logging.getLogger("emporium.messaging.topology")


@dataclass(frozen=True)
class WorkQueue:
    name: str
    # (exchange, routing key) bindings: events this queue takes besides the commands
    # addressed to it by name.
    bindings: tuple[tuple[str, str], ...] = ()
    # The message types the queue takes. The consumer decodes each body by its declared type
    # and validates it against its buf.validate rules before the handler sees it; another
    # type goes to the DLQ. Empty: any type this process has loaded.
    accepts: tuple[type[Message], ...] = ()
    max_deliveries: int = 5  # attempts that end in a handler failure, then the DLQ
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
    # As WorkQueue.accepts: a message of another type, or invalid, is skipped (and logged).
    accepts: tuple[type[Message], ...] = ()


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


async def declare(
    channel: AbstractChannel, topology: Topology, *, replicas: int | None = None
) -> None:
    """Declares `topology` (and the shared exchanges). `replicas`: nodes holding each quorum
    queue and stream on a cluster; None leaves it to the broker."""
    quorum: dict[str, Any] = {"x-queue-type": "quorum"}
    # A quorum queue dead-letters at least once only with this pair (RabbitMQ 3.10+); by
    # default a message is dropped when its dead-letter target is unavailable.
    safe_dead_letters = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    stream_type: dict[str, Any] = {"x-queue-type": "stream"}
    if replicas is not None:
        quorum["x-quorum-initial-group-size"] = replicas
        stream_type["x-initial-cluster-size"] = replicas
    events = await channel.declare_exchange(EVENTS_EXCHANGE, ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, ExchangeType.DIRECT, durable=True)
    exchanges = {EVENTS_EXCHANGE: events}
    for work in topology.all_work_queues():
        dlq = await _queue(channel, work.dead_letter_queue, quorum)
        await dlq.bind(dead, routing_key=work.name)
        queue = await _queue(
            channel,
            work.name,
            {
                **quorum,
                **safe_dead_letters,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-dead-letter-routing-key": work.name,
                "x-delivery-limit": POISON_DELIVERY_LIMIT,
            },
        )
        for exchange, routing_key in work.bindings:
            await queue.bind(exchanges[exchange], routing_key=routing_key)
        for delay in sorted(set(work.retry_delays)):
            await _queue(
                channel,
                work.retry_queue_for(delay),
                {**quorum, **safe_dead_letters, **_retry_arguments(work, delay)},
            )
    for stream in topology.all_streams():
        queue = await _queue(channel, stream.name, {**stream_type, "x-max-age": stream.max_age})
        for routing_key in stream.routing_keys:
            await queue.bind(events, routing_key=routing_key)


def _retry_arguments(work: WorkQueue, delay: float) -> dict[str, Any]:
    return {
        "x-message-ttl": _ms(delay),
        # The default exchange routes by queue name: straight back to the queue.
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": work.name,
    }


async def _queue(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed as error:
        # Declared before with other arguments; the broker closed the channel.
        log.warning(
            "queue %r exists with other arguments; using it as it is "
            "(renew it with: tools/broker renew %s)",
            name,
            name,
            extra={"queue": name, "error": str(error)},
        )
        await channel.reopen()
        return await channel.declare_queue(name, passive=True)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
