"""CPU per call of catalog's GetProduct against a bare grpc.aio echo call, in one run.

Every server runs in its own process; the figure is that process's CPU time (user + system, from
/proc) over the measured window divided by the calls it answered OK, so other work on the machine
slows the calls down but does not inflate the figure much. Servers, each measured in alternating
rounds (the lowest CPU per call of the rounds is kept):

- echo: a bare grpc.aio unary echo of the request's bytes (bench/echo_server.py);
- bare / runtime: catalog's servicer on a bare grpc.aio server (bench/bare_catalog.py) and the
  real service as the fleet runs it (full runtime: gate, telemetry, deadline, errors,
  validation; metrics on), SQLite;
- bare-memory / runtime-memory: the same with reads answered from memory
  (bench/catalog_in_memory.py), which separates the database's share from the rest.

    tools/bench get_product  [--seconds 5] [--concurrency 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.type import money_pb2

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from emporium.catalog.v1 import product_pb2
from libs.runtime.processes import ServiceProcess, start_service

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# name, module, environment
SERVERS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("echo", "bench.echo_server", {}),
    ("bare", "bench.bare_catalog", {}),
    ("runtime", "services.catalog", {"CATALOG_METRICS_PORT": "0"}),
    ("bare-memory", "bench.catalog_in_memory", {"BENCH_CATALOG_SERVER": "bare"}),
    (
        "runtime-memory",
        "bench.catalog_in_memory",
        {"BENCH_CATALOG_SERVER": "runtime", "CATALOG_METRICS_PORT": "0"},
    ),
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class Measurement:
    label: str
    calls: int
    seconds: float
    cpu_seconds: float
    latencies_ms: list[float]
    shed: int = 0

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.calls * 1e6 if self.calls else float("inf")

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def line(self) -> str:
        return (
            f"{self.label:<20} {self.cpu_us_per_call:8.0f} µs CPU/call  "
            f"{self.calls / self.seconds:7.0f} calls/s  p50 {self.percentile(0.5):6.2f} ms  "
            f"p99 {self.percentile(0.99):6.2f} ms" + (f"  ({self.shed} shed)" if self.shed else "")
        )


async def load(
    label: str,
    server: ServiceProcess,
    call: Callable[[], Awaitable[object]],
    args: argparse.Namespace,
) -> Measurement:
    """`concurrency` callers back to back: a one-second warm-up, then the measured window."""
    pid = server.process.pid
    latencies: list[float] = []
    counting = False
    stop = asyncio.Event()

    shed = 0

    async def caller() -> None:
        nonlocal shed
        while not stop.is_set():
            started = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as error:
                # Overload protection may shed a call now and then at full CPU: count it apart.
                if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                shed += counting
                continue
            if counting:
                latencies.append((time.perf_counter() - started) * 1000)

    callers = [asyncio.create_task(caller()) for _ in range(args.concurrency)]
    await asyncio.sleep(1.0)
    counting = True
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(args.seconds)
    cpu_after, elapsed = cpu_seconds(pid), time.perf_counter() - started
    counting = False
    calls = len(latencies)
    stop.set()
    await asyncio.gather(*callers)
    return Measurement(label, calls, elapsed, cpu_after - cpu_before, latencies, shed)


async def seed(stub: pb_grpc.CatalogServiceAsyncStub) -> str:
    async def items() -> AsyncIterator[pb.ImportProductsRequest]:
        for index in range(100):
            yield pb.ImportProductsRequest(
                product=product_pb2.Product(
                    sku=f"BENCH-{index}",
                    title=f"Bench mug {index}",
                    description="A mug to measure with.",
                    price=money_pb2.Money(currency_code="USD", units=12, nanos=500_000_000),
                    labels={"colour": "blue", "size": "large"},
                )
            )

    response = await stub.ImportProducts(items())
    return response.results[50].product.name


async def measure(
    label: str, module: str, env: dict[str, str], scratch: Path, args: argparse.Namespace
) -> Measurement:
    database = scratch / f"{label}-{time.monotonic_ns()}"
    server = await start_service(
        module,
        {
            "CATALOG_DATABASE_URL": f"sqlite+aiosqlite:///{database}.sqlite3",
            # Plaintext everywhere: this measures the request path, not TLS.
            "EMPORIUM_SECURITY": "insecure",
            **env,
        },
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            if module == "bench.echo_server":
                echo = channel.unary_unary("/bench.Echo/Echo", None, None)
                payload = pb.GetProductRequest(name="products/0123456789abcdef").SerializeToString()
                return await load(label, server, lambda: echo(payload), args)
            stub = pb_grpc.CatalogServiceStub(channel)
            request = pb.GetProductRequest(name=await seed(stub))
            return await load(label, server, lambda: stub.GetProduct(request), args)
    finally:
        await server.terminate()


async def run(args: argparse.Namespace) -> None:
    best: dict[str, Measurement] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(1, args.rounds + 1):
            for label, module, env in SERVERS:
                if label not in args.servers:
                    continue
                measured = await measure(label, module, env, Path(scratch), args)
                print(f"round {round_number}: {measured.line()}", flush=True)
                kept = best.get(label)
                if kept is None or measured.cpu_us_per_call < kept.cpu_us_per_call:
                    best[label] = measured
    load_average = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"\n{platform.node()} · {platform.machine()} · {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d %H:%M')} · concurrency {args.concurrency} · "
        f"{args.seconds:g} s · lowest CPU/call of {args.rounds} rounds · "
        f"load average {load_average}"
    )
    for label in args.servers:
        print(best[label].line())
    echo = best["echo"].cpu_us_per_call
    for label in (name for name in args.servers if name != "echo"):
        ratio = best[label].cpu_us_per_call / echo
        target = "  (target <= 3: " + ("met)" if ratio <= 3 else "NOT met)")
        print(f"{label + ' / echo':<30} {ratio:5.2f}{target if label == 'runtime' else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--servers",
        default=",".join(name for name, _, _ in SERVERS),
        help="a comma-separated subset of: " + ", ".join(name for name, _, _ in SERVERS),
    )
    args = parser.parse_args()
    known = {name for name, _, _ in SERVERS}
    args.servers = [name.strip() for name in args.servers.split(",")]
    if "echo" not in args.servers or not set(args.servers) <= known:
        parser.error(f"--servers must name echo and some of: {', '.join(sorted(known))}")
    if args.seconds <= 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--seconds must be > 0, --concurrency and --rounds >= 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
