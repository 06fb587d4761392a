"""opentelemetry-instrumentation-grpc against the project's own telemetry, spans and metrics on,
unary and server streaming, server side and client side, in one run.

Server (each variant its own process, the standard health service, load from this process):
  bare                  grpc.aio, no telemetry
  library               the library's aio server interceptor (spans; it records no metrics)
  middleware            libs.runtime's ServerTelemetry wrapped once at registration (spans)
  middleware+metrics    the same with a MeterProvider: `rpc.server.duration` on every call
Client (against the bare server):
  bare                  a grpc.aio stub
  library               the library's aio client interceptors on the channel (spans)
  kit                   libs.rpcclient's Upstream stub (CLIENT span and `rpc.client.duration`,
                        plus deadline, bulkhead, breaker and retry budget)
Spans are recorded and handed to a batch processor whose exporter drops them (the cost of an
exporter's network is not the instrumentation's).

    tools/bench otel_grpc [--seconds 5] [--concurrency 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
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
SERVERS = ("bare", "library", "middleware", "middleware+metrics")
CLIENTS = ("bare", "library", "kit")


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def record_spans(service: str) -> None:
    configure_tracing(service, record=True)
    add_span_processor(BatchSpanProcessor(Discard()))


async def serve(variant: str) -> None:
    """A server process: the health service with `variant`'s telemetry."""
    if variant != "bare":
        record_spans(f"bench-{variant}")
    if variant == "middleware+metrics":
        configure_metrics(f"bench-{variant}", 0)
    server = grpc.aio.server(
        # The instrumentation ships no type information.
        interceptors=[aio_server_interceptor()] if variant == "library" else None  # type: ignore[no-untyped-call]
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


async def measure(label: str, stub: Any, args: argparse.Namespace) -> tuple[Result, Result]:
    unary = await closed_loop(
        f"{label} unary",
        lambda: stub.Check(REQUEST),
        concurrency=args.concurrency,
        seconds=args.seconds,
    )

    async def one_stream() -> None:
        async for _ in stub.Watch(REQUEST):
            pass

    streams = await closed_loop(f"{label} stream", one_stream, concurrency=4, seconds=args.seconds)
    messages = Result(
        streams.label, streams.calls * STREAM_LENGTH, streams.seconds, streams.latencies_ms
    )
    return unary, messages


def keep_best(
    results: dict[str, tuple[Result, Result]], label: str, measured: tuple[Result, Result]
) -> None:
    best = results.get(label)
    results[label] = (
        measured if best is None else (faster(measured[0], best[0]), faster(measured[1], best[1]))
    )


async def run(args: argparse.Namespace) -> None:
    servers: dict[str, tuple[Result, Result]] = {}
    # Rounds alternate the variants; each keeps its best round (a 2-core machine is noisy).
    for variant in SERVERS * args.rounds:
        process = await _server(variant)
        try:
            async with grpc.aio.insecure_channel(process.address) as channel:
                keep_best(
                    servers,
                    variant,
                    await measure(variant, health_pb2_grpc.HealthStub(channel), args),
                )
        finally:
            await process.terminate()

    record_spans("bench-client")
    configure_metrics("bench-client", 0)
    clients: dict[str, tuple[Result, Result]] = {}
    upstream = await _server("bare")
    try:
        for variant in CLIENTS * args.rounds:
            interceptors = (
                aio_client_interceptors()  # type: ignore[no-untyped-call]
                if variant == "library"
                else None
            )
            async with grpc.aio.insecure_channel(
                upstream.address, interceptors=interceptors
            ) as channel:
                stub: Any = health_pb2_grpc.HealthStub(channel)
                if variant == "kit":
                    policy = UpstreamPolicy(idempotent=frozenset({"Check", "Watch"}))
                    stub = Upstream("health", channel, policy).stub(health_pb2_grpc.HealthStub)
                keep_best(clients, variant, await measure(variant, stub, args))
    finally:
        await upstream.terminate()

    print(
        f"\n{platform.node()} · {platform.machine()} · {time.strftime('%Y-%m-%d')} · "
        f"grpcio {grpc.__version__} · concurrency {args.concurrency} · {args.seconds}s · "
        f"best of {args.rounds} rounds"
    )
    for side, results in (("server", servers), ("client", clients)):
        print(f"\n{side}:")
        for unary, stream in results.values():
            print(f"  {unary.line()}")
            print(f"  {stream.label:<34} {stream.rate:>9.0f} msgs/s")
        for label in list(results)[1:]:
            for index, kind in ((0, "unary"), (1, "stream")):
                print(
                    "  "
                    + ratio_line(
                        f"{kind} {label}/bare",
                        results[label][index].rate,
                        results["bare"][index].rate,
                    )
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
