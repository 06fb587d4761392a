"""Publishing with publisher confirms and mandatory routing, each publish bounded in time.

Many publishes may be in flight on one channel at once (each awaits its own confirm), which is
what lifts throughput past one round trip per message. After a broker restart, a dropped link
or a lost cluster node the publisher connects again (to the next node first), declares its
topology there, and goes on; publishes made meanwhile fail fast with PublishFailed instead of
waiting, and those whose confirm was lost with the connection fail too (the outbox retries
them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from libs.messaging.broker import BrokerOptions, connect_next
from libs.messaging.envelope import Outgoing, encode, trace_headers
from libs.messaging.topology import Topology, declare
from libs.telemetry.tracing import spans_recorded

log = logging.getLogger("emporium.messaging")


class PublishFailed(Exception):
    """Not confirmed: unroutable, nacked, timed out, or the broker is away."""


class Publisher:
    def __init__(self, options: BrokerOptions, topology: Topology | None = None) -> None:
        self._options = options
        self._topology = topology or Topology()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._node = -1  # index in options.urls of the node last connected to
        self._up = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._keeper: asyncio.Task[None] | None = None
        self._tracer = trace.get_tracer("emporium.messaging")

    async def start(self) -> None:
        """Connects and declares the topology; BrokerUnreachable if no node answers."""
        await self._open()
        self._keeper = asyncio.create_task(self._keep_connected(), name="publisher")

    async def _open(self) -> None:
        connection, self._node = await connect_next(self._options, self._node)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare(channel, self._topology, replicas=self._options.replicas)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._lost.clear()
        connection.close_callbacks.add(lambda *_: self._lost.set())
        channel.close_callbacks.add(lambda *_: self._lost.set())
        self._connection, self._channel, self._exchanges = connection, channel, {}
        self._up.set()

    async def _keep_connected(self) -> None:
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            self._up.clear()
            log.warning("publisher connection lost; reconnecting")
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close()
            while not self._closing and not self._up.is_set():
                try:
                    await self._open()
                except Exception as error:  # whatever it was, the publisher keeps trying
                    log.warning("publisher: %s; retrying", error or repr(error))
                    await asyncio.sleep(self._options.reconnect_interval)

    async def connected(self) -> None:
        """Returns once the connection is up (again, after a drop)."""
        if self._keeper is None:
            raise PublishFailed("publisher not started")
        await self._up.wait()

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._connection is not None:
            await self._connection.close()

    async def publish(self, outgoing: Outgoing) -> None:
        """Publishes under the current trace context."""
        current = trace.get_current_span().get_span_context()
        carrier = trace_headers() if current.is_valid else {}
        await self.publish_message(
            outgoing.exchange, outgoing.routing_key, encode(outgoing), trace_context=carrier
        )

    async def publish_message(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        *,
        trace_context: dict[str, str],
    ) -> None:
        """Returns once the broker confirmed the message; raises PublishFailed otherwise,
        never later than the publish timeout. `trace_context` is the W3C headers of the trace
        the message belongs to (the writer's, kept in the outbox)."""
        if not spans_recorded(trace_context.get("traceparent")):
            message.headers.update(trace_context)  # passed on unchanged: nobody records here
            await self._send(exchange, routing_key, message)
            return
        with self._tracer.start_as_current_span(
            f"{exchange or 'amq.default'} publish",
            context=propagate.extract(trace_context),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.destination.name": exchange,
                "messaging.rabbitmq.destination.routing_key": routing_key,
                "messaging.message.id": message.message_id or "",
            },
        ):
            # The consumer continues from this span, not from whatever wrote the message.
            message.headers.update(trace_headers())
            await self._send(exchange, routing_key, message)

    async def _send(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        limit = self._options.publish_timeout
        if not self._up.is_set():
            raise PublishFailed("broker unavailable: reconnecting")
        try:
            target = self._exchanges.get(exchange) or await self._exchange(exchange)
            async with asyncio.timeout(limit):
                confirmation = await target.publish(message, routing_key, mandatory=True)
        except TimeoutError:
            raise PublishFailed(f"no confirm within {limit:g}s") from None
        except aiormq.exceptions.PublishError as error:
            raise PublishFailed(f"unroutable: {routing_key!r} on {exchange!r}") from error
        except aiormq.exceptions.DeliveryError as error:
            self._renew_channel()
            raise PublishFailed(f"refused (nack): {routing_key!r} on {exchange!r}") from error
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
            raise PublishFailed(f"broker unavailable: {error!r}") from error
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            self._renew_channel()
            raise PublishFailed(f"not confirmed: {confirmation!r}")

    def _renew_channel(self) -> None:
        # After a cluster node fails, a channel may go on sending a quorum queue's messages to
        # the dead leader, and the broker nacks every one; a new connection and channel find
        # the queue's current leader. Nacks are otherwise rare, so this costs nothing.
        self._lost.set()

    async def _exchange(self, name: str) -> AbstractExchange:
        if self._channel is None:
            raise PublishFailed("publisher not started")
        if name not in self._exchanges:
            self._exchanges[name] = (
                self._channel.default_exchange
                if name == ""
                else await self._channel.get_exchange(name, ensure=False)
            )
        return self._exchanges[name]
