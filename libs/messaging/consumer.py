"""Consumers: a work-queue consumer and an event-stream consumer on one supervised session.

The session connects, declares the topology, consumes, and when the connection drops (broker
restart, network cut, missed heartbeats) connects again after `reconnect_interval` (to the
next node of a cluster first) and resumes. Messages are acknowledged only after their handler
returned, that is after the handler's transaction committed (a stream consumer's, after its
batch's offset did); a message whose ack is lost with the connection is redelivered and the
inbox absorbs it.

Every body is decoded by its declared type and validated against the type's buf.validate rules
before the handler runs, as RPC requests are; a message that is unreadable, of a type the queue
does not take, or invalid never reaches the handler: a work queue dead-letters it at once with
the reason, a stream consumer skips it. Both log it once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from libs.messaging.broker import BrokerOptions, BrokerUnreachable, connect_next
from libs.messaging.envelope import (
    ATTEMPT_HEADER,
    DEAD_LETTER_REASON_HEADER,
    BadMessage,
    copy_of,
    decode,
    decode_valid,
    text_headers,
)
from libs.messaging.inbox import record, seen
from libs.messaging.metrics import (
    Handling,
    announce_consumer,
    consumer_attributes,
    record_lag,
)
from libs.messaging.offsets import load_offset, reset_offset, store_offset
from libs.messaging.topology import EventStream, Topology, WorkQueue, declare
from libs.storage.database import Database
from libs.storage.transaction import Transaction, TransactionFunction
from libs.telemetry.tracing import spans_recorded

log = logging.getLogger("emporium.messaging.consumer")

M = TypeVar("M", bound=Message)


class PermanentFailure(Exception):
    """Raised by a handler for a message no retry can fix (a permanent domain error): it goes
    straight to the DLQ with this exception's message as the reason."""


@dataclass(frozen=True)
class Delivery:
    """A received message, its body (decoded and validated), and where it stands."""

    message: AbstractIncomingMessage
    attempt: int  # handler attempts, this one included: 1 until the handler failed once
    offset: int | None = None  # streams only
    decoded: Message | None = None

    @property
    def message_id(self) -> str:
        return self.message.message_id or ""

    @property
    def message_type(self) -> str:
        return self.message.type or ""

    def body(self, expected: type[M]) -> M:
        """The body as `expected`; PermanentFailure if it is another type."""
        if isinstance(self.decoded, expected):
            return self.decoded
        try:
            return decode(self.message, expected)
        except BadMessage as error:
            raise PermanentFailure(str(error)) from error


Handler = Callable[[Delivery], Awaitable[None]]


class _Session:
    """Connect, consume, resume after a drop; stop gracefully."""

    kind = "consumer"

    def __init__(
        self,
        options: BrokerOptions,
        topology: Topology,
        queue: str,
        name: str,
        accepts: tuple[type[Message], ...],
    ) -> None:
        self._options = options
        self._topology = topology
        self._queue_name = queue
        self._metric_attributes = consumer_attributes(queue, name)
        announce_consumer(self._metric_attributes)
        self._accepts = accepts
        self.name = name
        self._node = -1  # index in options.urls of the node last connected to
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
                connection, self._node = await connect_next(self._options, self._node)
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
        await declare(channel, self._topology, replicas=self._options.replicas)
        channel.close_callbacks.add(lambda *_: lost.set())
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

    def _renew_session(self) -> None:
        """Finishes the messages in flight and connects again. After a cluster node fails, a
        channel may go on sending a quorum queue's messages to the dead leader (the broker
        refuses each one); a new connection and channel find the current leader."""
        self._restart.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    @contextlib.asynccontextmanager
    async def _tracked(self, message: AbstractIncomingMessage) -> AsyncIterator[trace.Span]:
        """Counts the message in flight and runs it in its CONSUMER span."""
        self._in_flight += 1
        self._drained.clear()
        handling = Handling(self._metric_attributes, redelivered=_redelivered(message))
        try:
            with self._span(message) as span:
                yield span
        finally:
            handling.done()
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
        super().__init__(options, topology, queue.name, name, queue.accepts)
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
        async with self._tracked(message) as span:
            try:
                body = decode_valid(message, self._accepts)
            except BadMessage as error:
                span.set_status(Status(StatusCode.ERROR, str(error)))
                await self._dead_letter(channel, message, str(error))
                return
            delivery = Delivery(message, attempt_of(message), decoded=body)
            try:
                await self._handler(delivery)
            except PermanentFailure as error:
                span.set_status(Status(StatusCode.ERROR, str(error)))
                await self._dead_letter(channel, message, f"permanent failure: {error}")
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
            await self._dead_letter(
                channel, message, f"failed {delivery.attempt} attempts; last: {error!r}"
            )
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
        retry = copy_of(message, headers)
        try:
            async with asyncio.timeout(self._options.publish_timeout):
                await channel.default_exchange.publish(
                    retry, self._work.retry_queue(delivery.attempt), mandatory=True
                )
        except Exception:
            # Could not park it for later: give it back now (the broker counts the delivery),
            # and take a new channel (see _renew_session).
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            self._renew_session()
            return
        with contextlib.suppress(Exception):
            await message.ack()

    async def _dead_letter(
        self, channel: AbstractChannel, message: AbstractIncomingMessage, reason: str
    ) -> None:
        """Into the DLQ with `reason` in a header: a confirmed copy, then the original acked."""
        log.error(
            "dead-lettered",
            extra={
                "queue": self._work.name,
                "message_id": message.message_id or "",
                "message_type": message.type or "",
                "reason": reason,
            },
        )
        headers = {k: v for k, v in message.headers.items() if k != "x-delivery-count"}
        headers[DEAD_LETTER_REASON_HEADER] = reason[:2000]
        copy = copy_of(message, headers)
        copy.content_type = message.content_type  # as it came, even when that was the fault
        try:
            async with asyncio.timeout(self._options.publish_timeout):
                await channel.default_exchange.publish(
                    copy, self._work.dead_letter_queue, mandatory=True
                )
        except Exception:
            # No copy: rejected, the queue's dead-letter exchange still routes it to the DLQ
            # (without the header; the log line above has the reason).
            with contextlib.suppress(Exception):
                await message.reject(requeue=False)
            self._renew_session()
        else:
            with contextlib.suppress(Exception):
                await message.ack()
        self.dead_lettered += 1
        Handling.dead_lettered(self._metric_attributes)


def attempt_of(message: AbstractIncomingMessage) -> int:
    """Handler attempts so far, this one included, as the retry queues carried it. The
    broker's own redeliveries (x-delivery-count: after a crash or a cut connection) do not
    count: the handler may have done its work, and its inbox absorbs the repeat."""
    return int(str(message.headers.get(ATTEMPT_HEADER, 1)))


def _redelivered(message: AbstractIncomingMessage) -> bool:
    """Not the message's first delivery: back from a retry queue, or redelivered by the broker."""
    return ATTEMPT_HEADER in message.headers or bool(message.redelivered)


StartAt = Literal["first", "last", "next"] | int | datetime


class StreamConsumer(_Session):
    """Reads an event stream from an offset, in order, and keeps an inbox of what it handled.

    The handler (`async (Delivery) -> None`) is given no connection: it does its effect (and,
    if the effect is in its own database, its own `Database.transaction`). The consumer works
    in batches: what has arrived, up to the prefetch, without waiting for more. For each batch
    it reads its inbox once (`inbox.seen`), runs the handler for the messages not seen before,
    in order, then records those ids in its inbox and stores the batch's last offset in ONE
    write transaction. On (re)connect it resumes after the stored offset, or from `start` when
    none is stored; a replay re-reads the stream and the inbox keeps the handler from seeing a
    message twice. A PermanentFailure (or an invalid message) skips the message; another
    error commits what was handled before it and re-reads from there after
    `reconnect_interval`.

    At-least-once: a crash (or a failed commit) after a handler's effect and before its
    batch's commit re-delivers the batch's handled messages on restart — up to a prefetch's
    worth, where it was one message when each handler ran inside its own offset transaction.
    A handler whose effect is outside (a mail) makes it idempotent by the message id where it
    can (Maildir does: the message id is the file's key)."""

    kind = "stream consumer"

    def __init__(
        self,
        options: BrokerOptions,
        topology: Topology,
        stream: EventStream,
        handler: Handler,
        *,
        name: str,
        database: Database,
        start: StartAt = "first",
        prefetch: int = 100,
    ) -> None:
        super().__init__(options, topology, stream.name, name, stream.accepts)
        self._stream = stream
        self._handler = handler
        self._database = database
        self._start = start
        self._prefetch = prefetch
        self._position: int | None = None
        self._committing = asyncio.Lock()  # a batch from its inbox read to its commit
        self._batches: _Batches | None = None
        self.handled = 0
        self.batches = 0  # write transactions: one per batch

    @property
    def position(self) -> int | None:
        """The offset of the last message handled (stored)."""
        return self._position

    async def replay(self, start: StartAt = "first") -> None:
        """Forgets the stored offset and reads again from `start`; the inbox keeps the handler
        from seeing again what it handled."""

        async def reset(tx: Transaction) -> None:
            await reset_offset(tx, self.name, self._stream.name)

        # Not while a batch commits (it would store its offset after the reset); the batches
        # still buffered are dropped by the restart.
        async with self._committing:
            await self._database.transaction(reset)
            self._start = start
            self._position = None
            if self._batches is not None:
                self._batches.dropping = True
            self._restart.set()

    async def wait_for_position(self, offset: int) -> None:
        """Returns once the message at `offset` (or a later one) has been handled."""
        await self.wait_until(lambda: self._position is not None and self._position >= offset)

    async def _session(self, connection: AbstractConnection) -> None:
        try:
            await super()._session(connection)
        finally:
            if self._batches is not None:
                # The batch being handled finishes (its acks may be lost with the connection:
                # the stored offset is what counts); the messages still buffered are dropped.
                await self._batches.close()
                self._batches = None

    async def _consume(self, channel: AbstractChannel, queue: AbstractQueue) -> str:
        await channel.set_qos(prefetch_count=self._prefetch)

        async def load(tx: Transaction) -> int | None:
            return await load_offset(tx, self.name, self._stream.name)

        stored = await self._database.transaction(load, write=False)
        start: StartAt = stored + 1 if stored is not None else self._start
        self._position = stored
        self._progressed()
        batches = self._batches = _Batches(self)

        async def on_message(message: AbstractIncomingMessage) -> None:
            # aiormq runs each delivery as a task, in the order they came: buffered in order.
            batches.add(message)

        return await queue.consume(on_message, arguments={"x-stream-offset": start})

    def _buffered(self, count: int) -> None:
        """`count` messages more (or, negative, fewer) buffered or being handled."""
        self._in_flight += count
        if self._in_flight == 0:
            self._drained.set()
        else:
            self._drained.clear()

    async def _handle_batch(
        self, batches: _Batches, messages: list[AbstractIncomingMessage]
    ) -> None:
        async with self._committing:
            if batches.dropping:  # a replay or a failure: re-read from the stored offset
                await _ack_all(messages)
                return
            position = self._position
            batch = [
                (message, offset)
                for message, offset in ((m, _offset(m)) for m in messages)
                if position is None or offset > position
            ]
            if not batch:
                await _ack_all(messages)
                return
            ids = {m.message_id for m, _ in batch if m.message_id}

            async def inbox_read(tx: Transaction) -> set[str]:
                return await seen(tx, self.name, ids)

            try:
                handled_before = await self._database.transaction(inbox_read, write=False)
            except Exception:
                log.exception(
                    "stream consumer cannot read its inbox; re-reading from the stored offset",
                    extra={"consumer": self.name},
                )
                batches.dropping = True
                self._restart.set()
                await _ack_all(messages)
                return
            handled: dict[str, None] = {}  # ids handled in this batch (in order), recorded
            settled = 0  # messages of the batch whose offset the commit may store
            failure: BaseException | None = None
            for message, offset in batch:
                message_id = message.message_id or ""
                if message_id and (message_id in handled_before or message_id in handled):
                    settled += 1  # a duplicate (the outbox publishes at least once) or a replay
                    continue
                try:
                    await self._handle(message, offset)
                except Exception as error:
                    failure = error
                    log.exception(
                        "stream handler failed; re-reading from the stored offset",
                        extra={"consumer": self.name, "offset": offset},
                    )
                    break
                if message_id:  # a message without an id cannot be told from a repeat
                    handled[message_id] = None
                settled += 1
            if settled:
                last = batch[settled - 1][1]
                try:
                    await self._database.transaction(self._committed(handled, last))
                except Exception as error:
                    failure = failure or error
                    log.exception(
                        "stream consumer could not store its offset; re-reading from the last "
                        "stored one (what was handled since is handled again)",
                        extra={"consumer": self.name, "offset": last},
                    )
                    settled = 0
                else:
                    self.batches += 1
            if failure is not None:
                batches.dropping = True
                self._restart.set()
            await _ack_all(messages)
            if settled:
                self.handled += settled
                self._position = batch[settled - 1][1]
                record_lag(self._metric_attributes, batch[settled - 1][0].timestamp)
                self._progressed()

    def _committed(self, handled: Iterable[str], offset: int) -> TransactionFunction[None]:
        async def commit(tx: Transaction) -> None:
            await record(tx, self.name, handled)
            await store_offset(tx, self.name, self._stream.name, offset)

        return commit

    async def _handle(self, message: AbstractIncomingMessage, offset: int) -> None:
        """Runs the handler on one message (in its span); a message no retry can fix is
        logged and skipped."""
        handling = Handling(self._metric_attributes, redelivered=_redelivered(message))
        try:
            with self._span(message):
                try:
                    body = decode_valid(message, self._accepts)
                except BadMessage as error:
                    raise PermanentFailure(str(error)) from error
                await self._handler(Delivery(message, 1, offset, body))
        except PermanentFailure as error:
            log.error(
                "skipping a message no retry can fix",
                extra={"consumer": self.name, "offset": offset, "error": str(error)},
            )
        finally:
            handling.done()


def _offset(message: AbstractIncomingMessage) -> int:
    return int(str(message.headers.get("x-stream-offset")))


async def _ack_all(messages: list[AbstractIncomingMessage]) -> None:
    """Acks (a stream's credit for more) on a channel that may be gone."""
    for message in messages:
        with contextlib.suppress(Exception):
            await message.ack()


class _Batches:
    """One session's buffer of stream deliveries and the task that handles them in batches."""

    def __init__(self, consumer: StreamConsumer) -> None:
        self._consumer = consumer
        self._buffer: collections.deque[AbstractIncomingMessage] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self.dropping = False  # after a failure or a replay: the session ends, nothing more
        self._task = asyncio.create_task(self._run(), name=f"stream-batches:{consumer.name}")

    def add(self, message: AbstractIncomingMessage) -> None:
        if self._closing:
            return  # the session is over: the next one re-reads from the stored offset
        self._buffer.append(message)
        self._consumer._buffered(1)
        self._arrived.set()

    async def _run(self) -> None:
        consumer = self._consumer
        while not self._closing:
            await self._arrived.wait()
            self._arrived.clear()
            while self._buffer and not self._closing:
                take = min(len(self._buffer), consumer._prefetch)
                batch = [self._buffer.popleft() for _ in range(take)]
                try:
                    # Finishes even if the session ends meanwhile (close waits for it).
                    await asyncio.shield(consumer._handle_batch(self, batch))
                except Exception:
                    log.exception("stream batch failed", extra={"consumer": consumer.name})
                    self.dropping = True
                    consumer._restart.set()
                finally:
                    consumer._buffered(-take)

    async def close(self) -> None:
        """Lets the batch being handled finish; drops the messages still buffered."""
        self._closing = True
        self._arrived.set()
        dropped = len(self._buffer)
        self._buffer.clear()
        self._consumer._buffered(-dropped)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
