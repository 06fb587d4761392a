"""What goes to a dead-letter queue, when, and with which reason (a fresh vhost per test):
messages are validated like RPCs before any handler sees them, and only the handler's own
failures use up the retry budget, never a redelivery after a crash or a cut connection."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest
from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.wrappers_pb2 import StringValue
from yarl import URL

from libs.messaging.broker import BrokerOptions, connect
from libs.messaging.consumer import Delivery, PermanentFailure, WorkConsumer
from libs.messaging.envelope import (
    ATTEMPT_HEADER,
    DEAD_LETTER_REASON_HEADER,
    Outgoing,
    to_amqp,
)
from libs.messaging.tests.kit import Parcel, parcel, parcel_name, publisher
from libs.messaging.topology import COMMANDS_EXCHANGE, POISON_DELIVERY_LIMIT, Topology, WorkQueue
from libs.server.grpc_app import free_port
from libs.testing.tcp_proxy import TcpProxy

WORK = WorkQueue("kit.parcels", accepts=(Parcel,), max_deliveries=2, retry_delays=(0.05,))
TOPOLOGY = Topology(work_queues=(WORK,))


async def take_all(options: BrokerOptions, queue: str) -> list[AbstractIncomingMessage]:
    connection = await connect(options)
    taken: list[AbstractIncomingMessage] = []
    try:
        channel = await connection.channel()
        source = await channel.get_queue(queue, ensure=False)
        while (message := await source.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
    finally:
        await connection.close()
    return taken


async def test_bad_messages_go_to_the_dlq_at_once_with_their_reason(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = BrokerOptions(amqp_url)
    seen: Counter[str] = Counter()

    async def handler(delivery: Delivery) -> None:
        name = parcel_name(delivery.body(Parcel))
        seen[name] += 1
        if name == "refused":
            raise PermanentFailure("no such customer")

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit")
    consumer.start()
    parcel_type = Parcel.DESCRIPTOR.full_name
    bad = {
        "garbage": to_amqp(
            body=b"\xff\xfe\x00garbage", message_type=parcel_type, message_id="garbage"
        ),
        "wrong-type": to_amqp(
            body=StringValue(value="x").SerializeToString(),
            message_type=StringValue.DESCRIPTOR.full_name,
            message_id="wrong-type",
        ),
        "unknown-type": to_amqp(
            body=b"", message_type="emporium.nothing.v1.Nothing", message_id="unknown-type"
        ),
        "invalid": to_amqp(
            body=parcel("", -5).SerializeToString(), message_type=parcel_type, message_id="invalid"
        ),
    }
    with caplog.at_level(logging.ERROR, logger="emporium.messaging.consumer"):
        async with publisher(options, TOPOLOGY) as pub:
            for message in bad.values():
                await pub.publish_message(COMMANDS_EXCHANGE, WORK.name, message, trace_context={})
            refused = Outgoing(
                COMMANDS_EXCHANGE, WORK.name, parcel("refused", 1), message_id="refused"
            )
            await pub.publish(refused)
            for i in range(10):
                await pub.publish(Outgoing(COMMANDS_EXCHANGE, WORK.name, parcel(f"ok-{i}", i + 1)))
        await asyncio.wait_for(
            consumer.wait_until(lambda: consumer.dead_lettered == 5 and consumer.handled == 10), 10
        )
        await consumer.stop()

    # The handler saw only the valid messages, each once; the permanent failure was not retried.
    assert seen == Counter({"refused": 1, **{f"ok-{i}": 1 for i in range(10)}})
    dead = {m.message_id: m for m in await take_all(options, WORK.dead_letter_queue)}
    assert set(dead) == {*bad, "refused"}
    reasons = {name: str(m.headers[DEAD_LETTER_REASON_HEADER]) for name, m in dead.items()}
    assert reasons["garbage"].startswith(f"unreadable {parcel_type}")
    assert reasons["wrong-type"] == (
        f"type 'google.protobuf.StringValue' is not taken here (expected {parcel_type})"
    )
    assert reasons["unknown-type"].startswith("type 'emporium.nothing.v1.Nothing' is not taken")
    assert reasons["invalid"] == (
        f"invalid {parcel_type}: name: must be at least 1 characters;"
        " weight: must be greater than 0"
    )
    assert reasons["refused"] == "permanent failure: no such customer"
    assert all(ATTEMPT_HEADER not in m.headers for m in dead.values())  # never retried
    assert dead["garbage"].body == bad["garbage"].body  # kept as it came, for inspection
    # One log line per dead letter, with its reason.
    logged = [r for r in caplog.records if r.getMessage() == "dead-lettered"]
    assert sorted(vars(r)["message_id"] for r in logged) == sorted(str(k) for k in dead)
    assert {vars(r)["message_id"]: vars(r)["reason"] for r in logged} == reasons


async def test_a_queue_without_accepts_takes_any_known_type_and_refuses_unknown_ones(
    amqp_url: str,
) -> None:
    options = BrokerOptions(amqp_url)
    open_queue = WorkQueue("kit.open", max_deliveries=2, retry_delays=(0.05,))
    topology = Topology(work_queues=(open_queue,))
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.message_type)

    consumer = WorkConsumer(options, topology, open_queue, handler, name="kit")
    consumer.start()
    async with publisher(options, topology) as pub:
        await pub.publish(Outgoing(COMMANDS_EXCHANGE, open_queue.name, StringValue(value="s")))
        await pub.publish(Outgoing(COMMANDS_EXCHANGE, open_queue.name, parcel("p", 1)))
        await pub.publish(Outgoing(COMMANDS_EXCHANGE, open_queue.name, parcel("p", 0)))
        unknown = to_amqp(body=b"", message_type="emporium.nothing.v1.Nothing", message_id="u")
        await pub.publish_message(COMMANDS_EXCHANGE, open_queue.name, unknown, trace_context={})
    await asyncio.wait_for(
        consumer.wait_until(lambda: consumer.handled == 2 and consumer.dead_lettered == 2), 10
    )
    await consumer.stop()
    assert sorted(seen) == sorted([StringValue.DESCRIPTOR.full_name, Parcel.DESCRIPTOR.full_name])
    reasons = sorted(
        str(m.headers[DEAD_LETTER_REASON_HEADER])
        for m in await take_all(options, open_queue.dead_letter_queue)
    )
    assert reasons == [
        f"invalid {Parcel.DESCRIPTOR.full_name}: weight: must be greater than 0",
        "unknown type 'emporium.nothing.v1.Nothing'",
    ]


async def test_redeliveries_after_cut_connections_do_not_use_up_the_retry_budget(
    amqp_url: str,
) -> None:
    url = URL(amqp_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    options = BrokerOptions(
        str(url.with_port(proxy.port)), heartbeat=2, reconnect_interval=0.1, publish_timeout=2
    )
    crashes = WORK.max_deliveries + 3
    deliveries: list[tuple[int, int]] = []  # (attempt, broker's x-delivery-count) per call
    hung = asyncio.Event()  # handlers "killed" mid-way never finish (released at the end)
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        redelivered = int(str(delivery.message.headers.get("x-delivery-count", 0)))
        deliveries.append((delivery.attempt, redelivered))
        if len(deliveries) <= crashes:
            # The consumer's link dies after the effect may have happened: no ack, no failure.
            await proxy.cut()
            await proxy.start()
            await hung.wait()
            return
        done.set()

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit")
    consumer.start()
    async with publisher(BrokerOptions(amqp_url), TOPOLOGY) as pub:
        await pub.publish(Outgoing(COMMANDS_EXCHANGE, WORK.name, parcel("charge", 10)))
    await asyncio.wait_for(done.wait(), 30)
    hung.set()
    await consumer.stop()
    await proxy.cut()

    assert crashes > WORK.max_deliveries and crashes < POISON_DELIVERY_LIMIT
    # Every delivery was the broker's (x-delivery-count 0, 1, 2, ...), none a handler retry.
    assert deliveries == [(1, n) for n in range(crashes + 1)]
    assert consumer.dead_lettered == 0
    assert await take_all(BrokerOptions(amqp_url), WORK.dead_letter_queue) == []
    assert consumer.sessions == crashes + 1


async def test_handler_failures_still_use_up_the_budget(amqp_url: str) -> None:
    options = BrokerOptions(amqp_url)
    attempts: list[int] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise RuntimeError("provider down")

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit")
    consumer.start()
    async with publisher(options, TOPOLOGY) as pub:
        await pub.publish(Outgoing(COMMANDS_EXCHANGE, WORK.name, parcel("charge", 10)))
    await asyncio.wait_for(consumer.wait_until(lambda: consumer.dead_lettered == 1), 10)
    await consumer.stop()
    assert attempts == [1, 2]
    (dead,) = await take_all(options, WORK.dead_letter_queue)
    assert dead.headers[DEAD_LETTER_REASON_HEADER] == (
        "failed 2 attempts; last: RuntimeError('provider down')"
    )


async def test_an_older_declaration_of_a_queue_is_used_as_it_is(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = BrokerOptions(amqp_url)
    connection = await connect(options)
    channel = await connection.channel()
    # As an earlier version of the kit declared it: a small x-delivery-limit.
    await channel.declare_queue(
        WORK.name,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-delivery-limit": 5},
    )
    await connection.close()
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(parcel_name(delivery.body(Parcel)))

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit")
    with caplog.at_level(logging.WARNING, logger="emporium.messaging.topology"):
        consumer.start()
        async with publisher(options, TOPOLOGY) as pub:
            await pub.publish(Outgoing(COMMANDS_EXCHANGE, WORK.name, parcel("still works", 1)))
        await asyncio.wait_for(consumer.wait_until(lambda: seen == ["still works"]), 10)
        await consumer.stop()
    warnings = [r.getMessage() for r in caplog.records if WORK.name in r.getMessage()]
    assert warnings and all(f"tools/broker renew {WORK.name}" in w for w in warnings)


async def test_the_first_reachable_of_several_addresses_is_used(amqp_url: str) -> None:
    nowhere = str(URL(amqp_url).with_port(free_port()))
    options = BrokerOptions(f"{nowhere},{amqp_url}", connect_timeout=2)
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(parcel_name(delivery.body(Parcel)))

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit")
    consumer.start()
    async with publisher(options, TOPOLOGY) as pub:
        await pub.publish(Outgoing(COMMANDS_EXCHANGE, WORK.name, parcel("via the second", 1)))
    await asyncio.wait_for(consumer.wait_until(lambda: seen == ["via the second"]), 10)
    await consumer.stop()
