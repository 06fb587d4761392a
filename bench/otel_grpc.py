"""opentelemetry-instrumentation-grpc against the project's own telemetry, spans and metrics on,
unary and server streaming, server side and client side, in one run.

Server (each variant its own process, the standard health service, load from this process):
  bare                  grpc.aio, no telemetry
  library               the library's aio server interceptor (spans; it records no metrics)
  middleware            libs.runtime's ServerTelemetry wrapped once at registration (spans)
  middleware+metrics    the same with a MeterProvider: `rpc.server.duration` on every call
Client (against the bare server; the client process has a MeterProvider):
  bare                  a grpc.aio stub
  library               the library's aio client interceptors on the channel (spans)
  kit                   libs.rpcclient's Upstream stub (CLIENT span and `rpc.client.duration`,
                        plus deadline, bulkhead, breaker and retry budget)
Recorded spans go to a batch processor whose exporter drops them (an exporter's network is not
the instrumentation's cost). "unrecorded" variants run as most calls do: no exporter and an
unsampled caller, so spans are not recorded. Besides throughput, it reports the CPU the side
under test spends per call, which a busy 2-core machine disturbs far less.

    tools/bench otel_grpc [--seconds 5] [--concurrency 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.health_server import STREAM_LENGTH, Health
from bench.load import Result, closed_loop, faster, ratio_line
from libs.rpcclient.upstream import Upstream, UpstreamPolicy
from libs.runtime.middleware import register
from libs.runtime.processes import ServiceProcess, start_service
from libs.telemetry.metrics import configure_metrics
from libs.telemetry.tracing import ServerTelemetry, add_span_processor, configure_tracing

REQUEST = health_pb2.HealthCheckRequest()
SERVE_ENV = "BENCH_OTEL_GRPC_SERVE"  # set: this process is a server of that variant
# "unrecorded": spans are not recorded (no exporter, an unsampled caller), the default mode.
SERVERS = (
    "bare",
    "library",
    "middleware",
    "middleware+metrics",
    "library unrecorded",
    "middleware+metrics unrecorded",
)
CLIENTS = ("bare", "library", "kit")


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def record_spans(service: str) -> None:
    configure_tracing(service, record=True)
    add_span_processor(BatchSpanProcessor(Discard()))


async def serve(variant: str) -> None:
    """A server process: the health service with `variant`'s telemetry."""
    if variant != "bare" and not variant.endswith("unrecorded"):
        record_spans("bench-server")
    if variant.startswith("middleware+metrics"):
        configure_metrics("bench-server", 0)
    server = grpc.aio.server(
        # The instrumentation ships no type information.
        interceptors=[aio_server_interceptor()] if variant.startswith("library") else None  # type: ignore[no-untyped-call]
    )
    if variant.startswith("middleware"):
        register(
            server, health_pb2_grpc.add_HealthServicer_to_server, Health(), [ServerTelemetry()]
        )
    else:
        health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f'{{"message": "serving", "port": {port}}}', file=sys.stderr, flush=True)
    await server.wait_for_termination()


@dataclass(frozen=True)
class Measured:
    unary: Result
    stream: Result  # in messages
    unary_cpu_us: float  # CPU of the measured side per call
    stream_cpu_us: float  # ... per streamed message

    def best(self, other: Measured | None) -> Measured:
        if other is None:
            return self
        return Measured(
            faster(self.unary, other.unary),
            faster(self.stream, other.stream),
            min(self.unary_cpu_us, other.unary_cpu_us),
            min(self.stream_cpu_us, other.stream_cpu_us),
        )


async def measure(
    label: str, stub: Any, args: argparse.Namespace, cpu: Callable[[], float]
) -> Measured:
    """Throughput and latency, and the CPU seconds `cpu()` (the side under test) spends per
    call: the cost of instrumentation, whatever else the machine is doing."""
    calls = 0

    async def check() -> None:
        nonlocal calls
        calls += 1
        await stub.Check(REQUEST)

    before = cpu()
    unary = await closed_loop(
        f"{label} unary", check, concurrency=args.concurrency, seconds=args.seconds
    )
    unary_cpu = (cpu() - before) / calls * 1e6
    streams = 0

    async def one_stream() -> None:
        nonlocal streams
        streams += 1
        async for _ in stub.Watch(REQUEST):
            pass

    before = cpu()
    streamed = await closed_loop(f"{label} stream", one_stream, concurrency=4, seconds=args.seconds)
    stream_cpu = (cpu() - before) / (streams * STREAM_LENGTH) * 1e6
    messages = Result(
        streamed.label, streamed.calls * STREAM_LENGTH, streamed.seconds, streamed.latencies_ms
    )
    return Measured(unary, messages, unary_cpu, stream_cpu)


def process_cpu(pid: int) -> Callable[[], float]:
    process = psutil.Process(pid)

    def seconds() -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    return seconds


async def run(args: argparse.Namespace) -> None:
    servers: dict[str, Measured] = {}
    # Rounds alternate the variants; each keeps its best round (a 2-core machine is noisy).
    for variant in SERVERS * args.rounds:
        process = await _server(variant)
        try:
            async with grpc.aio.insecure_channel(process.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                measured = await measure(variant, stub, args, process_cpu(process.process.pid))
                servers[variant] = measured.best(servers.get(variant))
        finally:
            await process.terminate()

    configure_metrics("bench-client", 0)
    clients: dict[str, Measured] = {}
    upstream = await _server("bare")
    try:
        # First as most calls run (spans not recorded), then with spans recorded.
        for recorded in (False, True):
            if recorded:
                record_spans("bench-client")
            suffix = "" if recorded else " unrecorded"
            for variant in CLIENTS * args.rounds:
                interceptors = (
                    aio_client_interceptors()  # type: ignore[no-untyped-call]
                    if variant == "library"
                    else None
                )
                async with grpc.aio.insecure_channel(
                    upstream.address, interceptors=interceptors
                ) as channel:
                    client: Any = health_pb2_grpc.HealthStub(channel)
                    if variant == "kit":
                        policy = UpstreamPolicy(idempotent=frozenset({"Check", "Watch"}))
                        client = Upstream("health", channel, policy).stub(
                            health_pb2_grpc.HealthStub
                        )
                    label = variant + ("" if variant == "bare" else suffix)
                    measured = await measure(label, client, args, time.process_time)
                    clients[label] = measured.best(clients.get(label))
    finally:
        await upstream.terminate()

    print(
        f"\n{platform.node()} · {platform.machine()} · {time.strftime('%Y-%m-%d')} · "
        f"grpcio {grpc.__version__} · concurrency {args.concurrency} · {args.seconds}s · "
        f"best of {args.rounds} rounds"
    )
    for side, results in (("server", servers), ("client", clients)):
        bare = results["bare"]
        print(f"\n{side} (CPU of the {side} process):")
        for m in results.values():
            print(f"  {m.unary.line()}   {m.unary_cpu_us:6.1f} µs CPU/call")
            print(
                f"  {m.stream.label:<34} {m.stream.rate:>9.0f} msgs/s   "
                f"{m.stream_cpu_us:6.2f} µs CPU/msg"
            )
        for label, m in list(results.items())[1:]:
            print(
                "  "
                + ratio_line(f"unary {label}/bare", m.unary.rate, bare.unary.rate)
                + f"   +{m.unary_cpu_us - bare.unary_cpu_us:.1f} µs CPU/call"
            )
            print(
                "  "
                + ratio_line(f"stream {label}/bare", m.stream.rate, bare.stream.rate)
                + f"   +{m.stream_cpu_us - bare.stream_cpu_us:.2f} µs CPU/msg"
            )


async def _server(variant: str) -> ServiceProcess:
    """This module again, as the server process of `variant`."""
    return await start_service("bench.otel_grpc", {SERVE_ENV: variant})


def main() -> None:
    variant = os.environ.get(SERVE_ENV)
    if variant:
        asyncio.run(serve(variant))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
