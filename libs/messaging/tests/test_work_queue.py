"""Work queues on a real broker (a fresh vhost per test): confirms, retries, the DLQ,
graceful shutdown and resuming after a cut connection."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from google.protobuf.wrappers_pb2 import BytesValue, StringValue
from yarl import URL

from libs.messaging.broker import BrokerOptions, connect
from libs.messaging.consumer import Delivery, WorkConsumer
from libs.messaging.envelope import Outgoing
from libs.messaging.publisher import PublishFailed
from libs.messaging.tests.kit import command, publisher
from libs.messaging.topology import COMMANDS_EXCHANGE, Topology, WorkQueue
from libs.testing.tcp_proxy import TcpProxy

WORK = WorkQueue("kit.work", max_deliveries=3, retry_delays=(0.05, 0.1))
TOPOLOGY = Topology(work_queues=(WORK,))


async def queue_depth(options: BrokerOptions, name: str) -> int:
    connection = await connect(options)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def test_unroutable_publish_is_an_error(amqp_url: str) -> None:
    options = BrokerOptions(amqp_url)
    async with publisher(options, TOPOLOGY) as pub:
        await pub.publish(command(WORK.name, "routed"))
        with pytest.raises(PublishFailed, match="unroutable"):
            await pub.publish(Outgoing(COMMANDS_EXCHANGE, "no.such.queue", StringValue()))
    assert await queue_depth(options, WORK.name) == 1


async def test_failing_message_reaches_dlq_after_exactly_max_deliveries(amqp_url: str) -> None:
    options = BrokerOptions(amqp_url)
    calls: Counter[str] = Counter()
    done: list[str] = []

    async def handler(delivery: Delivery) -> None:
        text = delivery.body(StringValue).value
        calls[text] += 1
        if text == "poison":
            raise RuntimeError("always fails")
        done.append(text)

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit", prefetch=10)
    consumer.start()
    async with publisher(options, TOPOLOGY) as pub:
        await pub.publish(command(WORK.name, "poison"))
        for i in range(20):
            await pub.publish(command(WORK.name, f"ok-{i}"))
    await asyncio.wait_for(
        consumer.wait_until(lambda: consumer.dead_lettered == 1 and len(done) == 20), 10
    )
    await consumer.stop()
    assert calls["poison"] == WORK.max_deliveries
    assert sorted(done) == sorted(f"ok-{i}" for i in range(20))
    assert await queue_depth(options, WORK.dead_letter_queue) == 1
    assert await queue_depth(options, WORK.name) == 0


async def test_permanent_failure_goes_straight_to_dlq(amqp_url: str) -> None:
    options = BrokerOptions(amqp_url)
    calls = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal calls
        calls += 1
        delivery.body(StringValue)  # the body is not a StringValue: PermanentFailure
        raise AssertionError("unreachable")

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit")
    consumer.start()
    async with publisher(options, TOPOLOGY) as pub:
        # Another type than the handler expects: no retry can fix that.
        await pub.publish(Outgoing(COMMANDS_EXCHANGE, WORK.name, BytesValue(value=b"x")))
    await asyncio.wait_for(consumer.wait_until(lambda: consumer.dead_lettered == 1), 10)
    await consumer.stop()
    assert calls == 1
    assert await queue_depth(options, WORK.dead_letter_queue) == 1


async def test_graceful_stop_finishes_in_flight_messages(amqp_url: str) -> None:
    options = BrokerOptions(amqp_url)
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def handler(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        finished.append(delivery.body(StringValue).value)

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit", prefetch=1)
    consumer.start()
    async with publisher(options, TOPOLOGY) as pub:
        await pub.publish(command(WORK.name, "slow"))
        await pub.publish(command(WORK.name, "waiting"))
    await started.wait()
    stopping = asyncio.create_task(consumer.stop(grace=5))
    # The subscription is cancelled before the message in flight may finish.
    await asyncio.wait_for(consumer.wait_until(lambda: not consumer.consuming.is_set()), 5)
    release.set()
    await stopping
    assert finished == ["slow"]
    # "slow" was acked; "waiting" was never started and is back in the queue.
    assert await queue_depth(options, WORK.name) == 1


async def test_consumer_resumes_and_publishes_stay_bounded_after_a_cut(amqp_url: str) -> None:
    url = URL(amqp_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    proxied = str(url.with_port(proxy.port))
    options = BrokerOptions(proxied, heartbeat=2, reconnect_interval=0.5, publish_timeout=1.0)
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.body(StringValue).value)

    consumer = WorkConsumer(options, TOPOLOGY, WORK, handler, name="kit")
    consumer.start()
    await consumer.consuming.wait()
    async with publisher(options, TOPOLOGY) as pub:
        await pub.publish(command(WORK.name, "before"))
        await asyncio.wait_for(consumer.wait_until(lambda: seen == ["before"]), 5)
        await proxy.cut()
        started = time.monotonic()
        with pytest.raises(PublishFailed):
            await pub.publish(command(WORK.name, "during"))
        assert time.monotonic() - started <= options.publish_timeout + 0.5
        await proxy.start()
        restored = time.monotonic()
        # A publisher on the direct broker address shows the consumer is back.
        async with publisher(BrokerOptions(amqp_url), TOPOLOGY) as direct:
            await direct.publish(command(WORK.name, "after"))
        allowed = options.heartbeat + options.reconnect_interval + 5
        await asyncio.wait_for(consumer.wait_until(lambda: "after" in seen), allowed)
        assert time.monotonic() - restored <= allowed
        assert consumer.sessions == 2
        # The publisher reconnected by itself too.
        await asyncio.wait_for(pub.connected(), allowed)
        await pub.publish(command(WORK.name, "through the proxy again"))
        await asyncio.wait_for(
            consumer.wait_until(lambda: "through the proxy again" in seen), allowed
        )
    await consumer.stop()
    await proxy.cut()
