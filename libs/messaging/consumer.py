"""Consumers: a work-queue consumer and an event-stream consumer on one supervised session.

The session connects, declares the topology, consumes, and when the connection drops (broker
restart, network cut, missed heartbeats) connects again after `reconnect_interval` and resumes.
Messages are acknowledged only after their handler returned, that is after the handler's
transaction committed; a message whose ack is lost with the connection is redelivered and the
inbox absorbs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.broker import BrokerOptions, BrokerUnreachable, connect
from libs.messaging.envelope import ATTEMPT_HEADER, BadMessage, decode, text_headers, to_amqp
from libs.messaging.offsets import load_offset, reset_offset, store_offset
from libs.messaging.topology import EventStream, Topology, WorkQueue, declare
from libs.storage.database import Database
from libs.telemetry.tracing import spans_recorded

log = logging.getLogger("emporium.messaging.consumer")

M = TypeVar("M", bound=Message)


class PermanentFailure(Exception):
    """Raised by a handler for a message no retry can fix: it goes straight to the DLQ."""


@dataclass(frozen=True)
class Delivery:
    """A received message and where it stands."""

    message: AbstractIncomingMessage
    attempt: int  # 1 on first delivery
    offset: int | None = None  # streams only

    @property
    def message_id(self) -> str:
        return self.message.message_id or ""

    @property
    def message_type(self) -> str:
        return self.message.type or ""

    def body(self, expected: type[M]) -> M:
        try:
            return decode(self.message, expected)
        except BadMessage as error:
            raise PermanentFailure(str(error)) from error


Handler = Callable[[Delivery], Awaitable[None]]


class _Session:
    """Connect, consume, resume after a drop; stop gracefully."""

    kind = "consumer"

    def __init__(self, options: BrokerOptions, topology: Topology, queue: str, name: str) -> None:
        self._options = options
        self._topology = topology
        self._queue_name = queue
        self.name = name
        self.consuming = asyncio.Event()
        self.sessions = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._restart = asyncio.Event()
        self._grace = 10.0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._tracer = trace.get_tracer("emporium.messaging")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.kind}:{self.name}")

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Returns once `predicate()` holds; it is checked after each message's outcome."""
        if predicate():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, waiter))
        await waiter

    def _progressed(self) -> None:
        for entry in list(self._waiters):
            predicate, waiter = entry
            if waiter.done() or predicate():
                self._waiters.remove(entry)
                if not waiter.done():
                    waiter.set_result(None)

    async def stop(self, grace: float = 10.0) -> None:
        """Stops taking messages, lets those in flight finish (and be acked), then closes."""
        self._grace = grace
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace + 1.0)
            except TimeoutError:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection = await connect(self._options)
            except BrokerUnreachable as error:
                log.warning("%s %s: %s; retrying", self.kind, self.name, error)
                await self._pause(self._options.reconnect_interval)
                continue
            try:
                await self._session(connection)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                log.warning(
                    "%s %s: queue %r does not exist yet (its owner declares it); retrying",
                    self.kind,
                    self.name,
                    self._queue_name,
                )
            except Exception:
                log.exception("%s %s: session failed", self.kind, self.name)
            finally:
                self.consuming.clear()
                with contextlib.suppress(Exception):
                    await connection.close()
            if not self._stop.is_set():
                await self._pause(self._options.reconnect_interval)

    async def _session(self, connection: AbstractConnection) -> None:
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel(publisher_confirms=True)
        channel.close_callbacks.add(lambda *_: lost.set())
        await declare(channel, self._topology)
        queue = await channel.get_queue(self._queue_name, ensure=False)
        tag = await self._consume(channel, queue)
        self.sessions += 1
        self.consuming.set()
        log.info("consuming", extra={"queue": self._queue_name, "consumer": self.name})
        self._restart.clear()
        waits = [
            asyncio.ensure_future(lost.wait()),
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._restart.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if lost.is_set():
            log.warning("connection lost; reconnecting", extra={"consumer": self.name})
            return
        # Stop (or restart): no new messages; the ones in flight finish and are acked.
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
        self.consuming.clear()  # no new messages from here on
        self._progressed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), self._grace)

    async def _consume(self, channel: AbstractChannel, queue: AbstractQueue) -> str:
        raise NotImplementedError

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    @contextlib.asynccontextmanager
    async def _tracked(self, message: AbstractIncomingMessage) -> AsyncIterator[trace.Span]:
        """Counts the message in flight and runs it in its CONSUMER span."""
        self._in_flight += 1
        self._drained.clear()
        try:
            with self._span(message) as span:
                yield span
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()

    def _span(self, message: AbstractIncomingMessage) -> ContextManager[trace.Span]:
        """A span that continues (and links to) the producer's trace, when it is recorded;
        otherwise the producer's trace context is made current as it is, so the handler's
        logs and outgoing messages stay in that trace."""
        traceparent = message.headers.get("traceparent")
        recorded = spans_recorded(None if traceparent is None else str(traceparent))
        if traceparent is None and not recorded:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        producer = propagate.extract(text_headers(message))
        producer_span = trace.get_current_span(producer)
        if not recorded:
            return trace.use_span(producer_span, end_on_exit=False)
        producer_context = producer_span.get_span_context()
        return self._tracer.start_as_current_span(
            f"{self._queue_name} process",
            context=producer,
            kind=SpanKind.CONSUMER,
            links=[Link(producer_context)] if producer_context.is_valid else [],
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.destination.name": self._queue_name,
                "messaging.message.id": message.message_id or "",
                "messaging.consumer.group.name": self.name,
            },
        )


class WorkConsumer(_Session):
    """Competing consumer of a work queue: prefetch, bounded concurrency, retries with backoff
    through the retry queues, the DLQ after `max_deliveries` or on PermanentFailure."""

    kind = "work consumer"

    def __init__(
        self,
        options: BrokerOptions,
        topology: Topology,
        queue: WorkQueue,
        handler: Handler,
        *,
        name: str,
        prefetch: int = 32,
        concurrency: int | None = None,
    ) -> None:
        super().__init__(options, topology, queue.name, name)
        self._work = queue
        self._handler = handler
        self._prefetch = prefetch
        self._slots = asyncio.Semaphore(concurrency or prefetch)
        self.handled = 0
        self.dead_lettered = 0

    async def _consume(self, channel: AbstractChannel, queue: AbstractQueue) -> str:
        await channel.set_qos(prefetch_count=self._prefetch)

        async def on_message(message: AbstractIncomingMessage) -> None:
            # The client cancels these tasks when the connection drops; the handler finishes
            # anyway (its ack is then lost, the message comes back, and the inbox absorbs it)
            # rather than stopping at an arbitrary await, say halfway through its commit.
            await asyncio.shield(self._in_slot(channel, message))

        return await queue.consume(on_message)

    async def _in_slot(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        async with self._slots:
            await self._handle(channel, message)

    async def _handle(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        try:
            await self._settle(channel, message)
        finally:
            self._progressed()

    async def _settle(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        delivery = Delivery(message, attempt_of(message))
        async with self._tracked(message) as span:
            try:
                await self._handler(delivery)
            except PermanentFailure as error:
                span.set_status(Status(StatusCode.ERROR, str(error)))
                log.error(
                    "permanent failure; to the dead-letter queue",
                    extra={"message_id": delivery.message_id, "error": str(error)},
                )
                await self._dead_letter(message)
                return
            except Exception as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                await self._retry_or_dead_letter(channel, delivery, error)
                return
            with contextlib.suppress(Exception):  # a lost ack means a redelivery: the inbox
                await message.ack()
            self.handled += 1

    async def _retry_or_dead_letter(
        self, channel: AbstractChannel, delivery: Delivery, error: Exception
    ) -> None:
        message = delivery.message
        if delivery.attempt >= self._work.max_deliveries:
            log.error(
                "delivery limit reached; to the dead-letter queue",
                extra={
                    "message_id": delivery.message_id,
                    "attempts": delivery.attempt,
                    "error": repr(error),
                },
            )
            await self._dead_letter(message)
            return
        delay = self._work.retry_delay(delivery.attempt)
        log.warning(
            "handler failed; retrying",
            extra={
                "message_id": delivery.message_id,
                "attempt": delivery.attempt,
                "retry_in_seconds": delay,
                "error": repr(error),
            },
        )
        headers = {k: v for k, v in message.headers.items() if not k.startswith("x-")}
        headers[ATTEMPT_HEADER] = delivery.attempt + 1
        retry = to_amqp(
            body=message.body,
            message_type=message.type or "",
            message_id=message.message_id or "",
            correlation_id=message.correlation_id or "",
            headers=headers,
            timestamp=message.timestamp,
        )
        try:
            async with asyncio.timeout(self._options.publish_timeout):
                await channel.default_exchange.publish(
                    retry, self._work.retry_queue(delivery.attempt), mandatory=True
                )
        except Exception:
            # Could not park it for later: give it back now (the broker counts the delivery).
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        with contextlib.suppress(Exception):
            await message.ack()

    async def _dead_letter(self, message: AbstractIncomingMessage) -> None:
        # Rejected without requeue, the queue's dead-letter exchange routes it to the DLQ.
        with contextlib.suppress(Exception):
            await message.reject(requeue=False)
        self.dead_lettered += 1


def attempt_of(message: AbstractIncomingMessage) -> int:
    """Deliveries so far, this one included: retries through the retry queues (our header)
    plus redeliveries by the broker (quorum queues count them in x-delivery-count)."""
    retried = int(str(message.headers.get(ATTEMPT_HEADER, 1)))
    redelivered = int(str(message.headers.get("x-delivery-count", 0)))
    return retried + redelivered


StartAt = Literal["first", "last", "next"] | int | datetime
StreamHandler = Callable[[Delivery, AsyncConnection], Awaitable[None]]


class StreamConsumer(_Session):
    """Reads an event stream from an offset, one message at a time. Each message's handler
    runs in a database transaction that also stores the message's offset, so effect and
    position commit together. On (re)connect the consumer resumes after the stored offset,
    or from `start` when none is stored. A handler error rolls back and re-reads from the
    stored offset after `reconnect_interval`; a PermanentFailure skips the message."""

    kind = "stream consumer"

    def __init__(
        self,
        options: BrokerOptions,
        topology: Topology,
        stream: EventStream,
        handler: StreamHandler,
        *,
        name: str,
        database: Database,
        start: StartAt = "first",
        prefetch: int = 100,
    ) -> None:
        super().__init__(options, topology, stream.name, name)
        self._stream = stream
        self._handler = handler
        self._database = database
        self._start = start
        self._prefetch = prefetch
        self._position: int | None = None
        self.handled = 0

    @property
    def position(self) -> int | None:
        """The offset of the last message handled (stored)."""
        return self._position

    async def replay(self, start: StartAt = "first") -> None:
        """Forgets the stored offset and reads again from `start`."""
        async with self._database.writing() as connection:
            await reset_offset(connection, self.name, self._stream.name)
        self._start = start
        self._position = None
        self._restart.set()

    async def wait_for_position(self, offset: int) -> None:
        """Returns once the message at `offset` (or a later one) has been handled."""
        await self.wait_until(lambda: self._position is not None and self._position >= offset)

    async def _consume(self, channel: AbstractChannel, queue: AbstractQueue) -> str:
        await channel.set_qos(prefetch_count=self._prefetch)
        stored = await load_offset(self._database.engine, self.name, self._stream.name)
        start: StartAt = stored + 1 if stored is not None else self._start
        self._position = stored
        self._progressed()
        failed = False
        in_order = asyncio.Lock()  # aiormq runs each delivery as a task; keep them in order

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal failed
            async with in_order:
                offset = int(str(message.headers.get("x-stream-offset")))
                if failed or (self._position is not None and offset <= self._position):
                    with contextlib.suppress(Exception):
                        await message.ack()
                    return
                try:
                    # Finishes even if the client cancels this task on a dropped connection.
                    await asyncio.shield(self._handle(message, offset))
                except Exception:
                    log.exception(
                        "stream handler failed; re-reading from the stored offset",
                        extra={"consumer": self.name, "offset": offset},
                    )
                    failed = True
                    self._restart.set()
                    return
                with contextlib.suppress(Exception):
                    await message.ack()
                self.handled += 1
                self._position = offset
                self._progressed()

        return await queue.consume(on_message, arguments={"x-stream-offset": start})

    async def _handle(self, message: AbstractIncomingMessage, offset: int) -> None:
        async with self._tracked(message), self._database.writing() as connection:
            try:
                await self._handler(Delivery(message, 1, offset), connection)
            except PermanentFailure as error:
                log.error(
                    "skipping a message no retry can fix",
                    extra={"consumer": self.name, "offset": offset, "error": str(error)},
                )
            await store_offset(connection, self.name, self._stream.name, offset)
