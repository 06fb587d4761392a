"""GetProduct and WatchProducts through the full runtime (every middleware on: shutdown gate,
telemetry span, error translation, validation), without and with metrics (the MeterProvider
and its Prometheus endpoint: `rpc.server.duration` recorded on every call), against the same
servicer on a bare grpc.aio server, in one run. Prints throughput, p50/p99 and the ratios.

    tools/bench runtime_overhead  [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.type import money_pb2

from bench.load import Result, closed_loop, faster, ratio_line
from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from emporium.catalog.v1 import product_pb2
from libs.runtime.processes import ServiceProcess, start_service

HISTORY = 5000


async def seed(stub: pb_grpc.CatalogServiceAsyncStub) -> str:
    async def items() -> AsyncIterator[pb.ImportProductsRequest]:
        for index in range(HISTORY):
            yield pb.ImportProductsRequest(
                product=product_pb2.Product(
                    sku=f"BENCH-{index}",
                    title=f"Bench {index}",
                    price=money_pb2.Money(currency_code="USD", units=index % 100),
                )
            )

    response = await stub.ImportProducts(items())
    return response.results[0].product.name


async def measure(label: str, server: ServiceProcess, args: argparse.Namespace) -> list[Result]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.CatalogServiceStub(channel)
        name = await seed(stub)
        request = pb.GetProductRequest(name=name)
        unary = await closed_loop(
            f"{label} GetProduct",
            lambda: stub.GetProduct(request),
            concurrency=args.concurrency,
            seconds=args.seconds,
        )

        async def replay() -> None:
            count = 0
            async for _ in stub.WatchProducts(pb.WatchProductsRequest(after_revision=0)):
                count += 1
                if count == HISTORY:
                    return

        started = time.perf_counter()
        delivered = 4 * HISTORY
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(replay() for _ in range(4)))
        except TimeoutError:  # a broken change feed must not hang the bench: say so, go on
            print(f"{label}: WatchProducts replays did not deliver {HISTORY} changes in 60 s")
            delivered = 0
        elapsed = time.perf_counter() - started
        stream = Result(f"{label} WatchProducts (4 x replay)", delivered, elapsed, [])
    return [unary, stream]


async def run(args: argparse.Namespace) -> None:
    # Rounds alternate bare and runtime; each side keeps its best round (a 2-core machine is noisy).
    results: dict[str, list[Result]] = {}
    servers: tuple[tuple[str, str, dict[str, str]], ...] = (
        ("bare", "bench.bare_catalog", {}),
        ("runtime", "services.catalog", {}),
        ("runtime+metrics", "services.catalog", {"CATALOG_METRICS_PORT": "0"}),
    )
    with tempfile.TemporaryDirectory() as scratch:
        for round_number, (label, module, extra) in enumerate(servers * args.rounds):
            database = Path(scratch) / f"{label}-{round_number}.sqlite3"
            server = await start_service(
                module,
                {
                    "CATALOG_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
                    # Both sides plaintext: this measures the runtime, not TLS.
                    "EMPORIUM_SECURITY": "insecure",
                    **extra,
                },
            )
            try:
                measured = await measure(label, server, args)
            finally:
                await server.terminate()
            best = results.get(label)
            results[label] = [
                faster(new, old) for new, old in zip(measured, best or measured, strict=True)
            ]
    print(
        f"\n{platform.node()} · {platform.processor() or platform.machine()} · "
        f"{time.strftime('%Y-%m-%d')} · concurrency {args.concurrency} · {args.seconds}s · "
        f"best of {args.rounds} rounds"
    )
    for label, _, _ in servers:
        unary, stream = results[label]
        print(unary.line())
        print(f"{stream.label:<34} {stream.rate:>9.0f} msgs/s")
    print(
        ratio_line(
            "GetProduct runtime/bare",
            results["runtime"][0].rate,
            results["bare"][0].rate,
            target=0.85,
        )
    )
    print(
        ratio_line(
            "WatchProducts runtime/bare", results["runtime"][1].rate, results["bare"][1].rate
        )
    )
    print(
        ratio_line(
            "GetProduct runtime+metrics/bare",
            results["runtime+metrics"][0].rate,
            results["bare"][0].rate,
            target=0.85,
        )
    )
    print(
        ratio_line(
            "WatchProducts runtime+metrics/bare",
            results["runtime+metrics"][1].rate,
            results["bare"][1].rate,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
