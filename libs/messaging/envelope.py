"""The message format: a protobuf body named by its full type, ids, a timestamp and the W3C
trace context in the headers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aio_pika
import protovalidate
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry import context as otel_context
from opentelemetry import propagate

from libs.messaging.topology import COMMANDS_EXCHANGE, EVENTS_EXCHANGE
from libs.runtime.validation import violations_of

CONTENT_TYPE = "application/x-protobuf"
# Handler attempts so far (retries through the retry queues); broker redeliveries do not count.
ATTEMPT_HEADER = "x-emporium-attempt"
# Why a message is in a dead-letter queue (tools/broker peek shows it).
DEAD_LETTER_REASON_HEADER = "x-emporium-dead-letter-reason"

M = TypeVar("M", bound=Message)


class BadMessage(ValueError):
    """A message that no retry can fix: wrong type, not protobuf, or unreadable."""


@dataclass(frozen=True)
class Outgoing:
    """A message to publish: where to, what, and under which ids."""

    exchange: str
    routing_key: str
    body: Message
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    correlation_id: str = ""


def trace_headers(context: otel_context.Context | None = None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def to_amqp(
    *,
    body: bytes,
    message_type: str,
    message_id: str,
    correlation_id: str = "",
    headers: Mapping[str, Any] | None = None,
    timestamp: datetime | None = None,
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type=CONTENT_TYPE,
        type=message_type,
        message_id=message_id,
        correlation_id=correlation_id or None,
        timestamp=timestamp or datetime.now(UTC),
        headers=dict(headers or {}),
        delivery_mode=DeliveryMode.PERSISTENT,
    )


def copy_of(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> aio_pika.Message:
    """`message` to publish again (a retry, a dead letter, one moved back from the DLQ): its
    body, type, ids and time, with `headers` in place of its own."""
    return to_amqp(
        body=message.body,
        message_type=message.type or "",
        message_id=message.message_id or "",
        correlation_id=message.correlation_id or "",
        headers=headers,
        timestamp=message.timestamp,
    )


def encode(outgoing: Outgoing) -> aio_pika.Message:
    return to_amqp(
        body=outgoing.body.SerializeToString(),
        message_type=outgoing.body.DESCRIPTOR.full_name,
        message_id=outgoing.message_id,
        correlation_id=outgoing.correlation_id,
    )


def decode(message: AbstractIncomingMessage, expected: type[M]) -> M:
    """The body as `expected`; BadMessage if the message is something else."""
    if message.content_type != CONTENT_TYPE:
        raise BadMessage(f"content_type {message.content_type!r}, expected {CONTENT_TYPE}")
    if message.type != expected.DESCRIPTOR.full_name:
        raise BadMessage(f"type {message.type!r}, expected {expected.DESCRIPTOR.full_name}")
    decoded = expected()
    try:
        decoded.ParseFromString(message.body)
    except DecodeError as error:
        raise BadMessage(f"unreadable {message.type}: {error}") from error
    return decoded


def decode_valid(message: AbstractIncomingMessage, accepts: tuple[type[Message], ...]) -> Message:
    """The body decoded by the message's declared type, which must be one of `accepts` (or,
    when that is empty, any type loaded in this process), and checked against the type's
    buf.validate rules, as RPC requests are. BadMessage says what is wrong."""
    if message.content_type != CONTENT_TYPE:
        raise BadMessage(f"content_type {message.content_type!r}, expected {CONTENT_TYPE}")
    message_class = _message_class(message.type or "", accepts)
    decoded = message_class()
    try:
        decoded.ParseFromString(message.body)
    except DecodeError as error:
        raise BadMessage(f"unreadable {message.type}: {error}") from error
    try:
        violations = violations_of(decoded)
    except (protovalidate.CompilationError, protovalidate.EvaluationError) as error:
        # A rule in the contract that cannot run: no retry fixes that either.
        raise BadMessage(f"cannot validate {message.type}: {error}") from error
    if violations:
        broken = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise BadMessage(f"invalid {message.type}: {broken}")
    return decoded


def _message_class(name: str, accepts: tuple[type[Message], ...]) -> type[Message]:
    if accepts:
        for accepted in accepts:
            if accepted.DESCRIPTOR.full_name == name:
                return accepted
        expected = ", ".join(a.DESCRIPTOR.full_name for a in accepts)
        raise BadMessage(f"type {name!r} is not taken here (expected {expected})")
    try:
        pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    except KeyError:
        raise BadMessage(f"unknown type {name!r}") from None


def text_headers(message: AbstractIncomingMessage) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in message.headers.items()}


def event(domain: str, body: Message, *, correlation_id: str = "") -> Outgoing:
    """A domain event, routed as `<domain>.<MessageName>` on the events exchange."""
    return Outgoing(
        EVENTS_EXCHANGE, event_key(domain, type(body)), body, correlation_id=correlation_id
    )


def command(queue: str, body: Message, *, correlation_id: str = "") -> Outgoing:
    """A command for the work queue `queue` (one consumer takes it)."""
    return Outgoing(COMMANDS_EXCHANGE, queue, body, correlation_id=correlation_id)


def event_key(domain: str, message: type[Message]) -> str:
    return f"{domain}.{message.DESCRIPTOR.name}"
