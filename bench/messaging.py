"""Work-queue throughput and latency on one RabbitMQ queue, three ways, in one run:

- plain aio-pika code doing the job by hand (confirmed publishes, many in flight; consume with
  prefetch, ack each after handling),
- the Emporium messaging kit (libs/messaging: Publisher, WorkConsumer on a quorum queue with
  its retry and dead-letter topology, tracing, attempt accounting),
- Celery on the same broker (what a Python user would pick for work queues: confirmed publishes,
  acks_late, a quorum queue, one solo worker process).

Three phases each: publish N messages with confirms (no consumer), consume the N-message
backlog with acks, then a steady 500 msg/s stream with the consumer running for end-to-end
latency (publish to handler).

    tools/bench messaging [--messages 20000] [--rounds 5] [--url amqp://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.wrappers_pb2 import DoubleValue

from libs.messaging.broker import DEFAULT_AMQP_URL, BrokerOptions
from libs.messaging.consumer import Delivery, WorkConsumer
from libs.messaging.envelope import Outgoing
from libs.messaging.publisher import Publisher
from libs.messaging.topology import COMMANDS_EXCHANGE, Topology, WorkQueue
from libs.telemetry.tracing import configure_tracing

IN_FLIGHT = 1000  # confirms outstanding at once (plain and kit alike)
PREFETCH = 256
STEADY_RATE = 500
STEADY_SECONDS = 4


@dataclass
class Figures:
    label: str
    publish_rate: float
    consume_rate: float
    latencies_ms: list[float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def line(self) -> str:
        return (
            f"{self.label:<10} publish {self.publish_rate:>7.0f} msg/s   consume "
            f"{self.consume_rate:>7.0f} msg/s   end-to-end p50 {self.percentile(0.5):6.2f} ms"
            f"   p99 {self.percentile(0.99):6.2f} ms"
        )


async def windowed(count: int, publish_one: Callable[[int], Awaitable[None]]) -> float:
    """Publishes `count` messages with up to IN_FLIGHT confirms outstanding; returns msg/s."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with slots:
            await publish_one(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


async def steady(publish_one: Callable[[int], Awaitable[None]]) -> None:
    total = STEADY_RATE * STEADY_SECONDS
    started = time.perf_counter()
    pending = []
    for i in range(total):
        await asyncio.sleep(max(0.0, started + i / STEADY_RATE - time.perf_counter()))
        pending.append(asyncio.ensure_future(publish_one(i)))
    await asyncio.gather(*pending)


class Arrivals:
    """Counts handled messages; `rate` covers first to last arrival."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.times: list[float] = []
        self.latencies_ms: list[float] = []
        self.done = asyncio.Event()

    def note(self, sent: float) -> None:
        now = time.time()
        self.times.append(now)
        self.latencies_ms.append((now - sent) * 1000)
        if len(self.times) == self.expected:
            self.done.set()

    @property
    def rate(self) -> float:
        return len(self.times) / max(1e-9, self.times[-1] - self.times[0])


def body(sent: float | None = None) -> bytes:
    return DoubleValue(value=time.time() if sent is None else sent).SerializeToString()


def sent_at(raw: bytes) -> float:
    value = DoubleValue()
    value.ParseFromString(raw)
    return value.value


async def plain(url: str, count: int) -> Figures:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    queue = await channel.declare_queue(
        "bench.plain", durable=True, arguments={"x-queue-type": "quorum"}
    )

    async def publish(_: int) -> None:
        # What a careful hand-written producer sets: an id, the type, a timestamp, persistence.
        message = aio_pika.Message(
            body(),
            content_type="application/x-protobuf",
            type=DoubleValue.DESCRIPTOR.full_name,
            message_id=uuid.uuid4().hex,
            timestamp=datetime.now(UTC),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await channel.default_exchange.publish(message, "bench.plain", mandatory=True)

    publish_rate = await windowed(count, publish)
    consumer_channel = await connection.channel()
    await consumer_channel.set_qos(prefetch_count=PREFETCH)
    arrivals = Arrivals(count)

    async def handle(message: AbstractIncomingMessage) -> None:
        arrivals.note(sent_at(message.body))
        await message.ack()

    consuming = await consumer_channel.get_queue("bench.plain")
    tag = await consuming.consume(handle)
    await arrivals.done.wait()
    steady_arrivals = Arrivals(STEADY_RATE * STEADY_SECONDS)
    arrivals_ref = [steady_arrivals]

    async def handle_steady(message: AbstractIncomingMessage) -> None:
        arrivals_ref[0].note(sent_at(message.body))
        await message.ack()

    await consuming.cancel(tag)
    await consuming.consume(handle_steady)
    await steady(publish)
    await steady_arrivals.done.wait()
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()
    return Figures("aio-pika", publish_rate, arrivals.rate, steady_arrivals.latencies_ms)


async def kit(url: str, count: int) -> Figures:
    options = BrokerOptions(url, publish_timeout=30)
    work = WorkQueue("bench.kit", accepts=(DoubleValue,))
    topology = Topology(work_queues=(work,))
    publisher = Publisher(options, topology)
    await publisher.start()

    async def publish(_: int) -> None:
        await publisher.publish(
            Outgoing(COMMANDS_EXCHANGE, work.name, DoubleValue(value=time.time()))
        )

    publish_rate = await windowed(count, publish)
    backlog = Arrivals(count)
    current = [backlog]

    async def handle(delivery: Delivery) -> None:
        current[0].note(delivery.body(DoubleValue).value)

    consumer = WorkConsumer(options, topology, work, handle, name="bench", prefetch=PREFETCH)
    consumer.start()
    await backlog.done.wait()
    steady_arrivals = Arrivals(STEADY_RATE * STEADY_SECONDS)
    current[0] = steady_arrivals
    await steady(publish)
    await steady_arrivals.done.wait()
    await consumer.stop()
    await publisher.close()
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    for name in (work.name, work.dead_letter_queue, *work.retry_queues):
        await channel.queue_delete(name)
    await connection.close()
    return Figures("kit", publish_rate, backlog.rate, steady_arrivals.latencies_ms)


def celery(url: str, count: int, directory: Path) -> Figures:
    os.environ["BENCH_AMQP_URL"] = url
    from bench.celery_worker import QUEUE, app, record

    started = time.perf_counter()
    for _ in range(count):
        record.apply_async((time.time(), count, str(directory / "backlog.json")), queue=QUEUE)
    publish_rate = count / (time.perf_counter() - started)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_worker",
            "worker",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ],
        env={**os.environ},
    )
    try:
        backlog = _wait_for_json(directory / "backlog.json", worker)
        steady_count = STEADY_RATE * STEADY_SECONDS
        begin = time.perf_counter()
        for i in range(steady_count):
            time.sleep(max(0.0, begin + i / STEADY_RATE - time.perf_counter()))
            record.apply_async(
                (time.time(), steady_count, str(directory / "steady.json")), queue=QUEUE
            )
        steady_arrivals = _wait_for_json(directory / "steady.json", worker)
    finally:
        worker.terminate()
        worker.wait(30)
    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(QUEUE)
    times = [arrived for _, arrived in backlog]
    return Figures(
        "celery",
        publish_rate,
        len(times) / (max(times) - min(times)),
        [(arrived - sent) * 1000 for sent, arrived in steady_arrivals],
    )


def _wait_for_json(path: Path, worker: subprocess.Popen[bytes]) -> list[tuple[float, float]]:
    while not path.exists():  # written by the worker process once all have arrived
        if worker.poll() is not None:
            raise RuntimeError("the celery worker exited")
        time.sleep(0.1)
    data: list[tuple[float, float]] = json.loads(path.read_text())
    return data


def median(rounds: list[Figures]) -> Figures:
    return Figures(
        rounds[0].label,
        statistics.median(r.publish_rate for r in rounds),
        statistics.median(r.consume_rate for r in rounds),
        sorted(rounds, key=lambda r: r.percentile(0.5))[len(rounds) // 2].latencies_ms,
    )


def ratio(label: str, ours: float, theirs: float) -> str:
    return f"  {label:<36} {ours / theirs:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5, help="paired aio-pika and kit rounds")
    parser.add_argument("--url", default=os.environ.get("EMPORIUM_AMQP_URL", DEFAULT_AMQP_URL))
    args = parser.parse_args()
    # As every service runs (run_service): an SDK tracer provider, spans recorded only when an
    # exporter reads them or the caller's trace is sampled.
    configure_tracing("bench")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.messages} messages per run"
    )
    # Rounds pair aio-pika and the kit back to back; the median of the paired ratios is the
    # figure. The broker's fsyncs, and the confirm batching that follows from them, make single
    # runs differ by 20% or more, and pairing cancels the drift between rounds.
    plain_rounds, kit_rounds = [], []
    for number in range(1, args.rounds + 1):
        # Alternate which goes first, so neither always follows the deletion of the other's queue.
        order = (plain, kit) if number % 2 else (kit, plain)
        first, second = (asyncio.run(run(args.url, args.messages)) for run in order)
        plain_rounds.append(first if order[0] is plain else second)
        kit_rounds.append(second if order[0] is plain else first)
        print(
            f"round {number}/{args.rounds}: kit / aio-pika publish "
            f"{kit_rounds[-1].publish_rate / plain_rounds[-1].publish_rate:.2f}, consume "
            f"{kit_rounds[-1].consume_rate / plain_rounds[-1].consume_rate:.2f}",
            flush=True,
        )
    results = [median(plain_rounds), median(kit_rounds)]
    with tempfile.TemporaryDirectory() as directory:
        results.append(celery(args.url, args.messages, Path(directory)))
    for figures in results:
        print(figures.line())
    ours, cel = results[1], results[2]
    publish_ratios = [
        k.publish_rate / p.publish_rate for k, p in zip(kit_rounds, plain_rounds, strict=True)
    ]
    consume_ratios = [
        k.consume_rate / p.consume_rate for k, p in zip(kit_rounds, plain_rounds, strict=True)
    ]
    print("ratios (kit / other; against aio-pika the median of the paired rounds):")
    print(f"  {'publish vs aio-pika (target >= 0.9)':<36} {statistics.median(publish_ratios):5.2f}")
    print(f"  {'consume vs aio-pika (target >= 0.9)':<36} {statistics.median(consume_ratios):5.2f}")
    print(ratio("publish vs Celery (target > 1)", ours.publish_rate, cel.publish_rate))
    print(ratio("consume vs Celery (target > 1)", ours.consume_rate, cel.consume_rate))


if __name__ == "__main__":
    main()
