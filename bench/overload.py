"""Overload: catalog's GetProduct (or ListProducts) offered 3x its measured capacity, with and
without the runtime's overload protection, in one run.

For each side a fresh catalog process (SQLite) is measured in three phases:
1. capacity: closed-loop callers (`--concurrency`) for `--capacity-seconds`;
2. overload: open-loop arrivals at `--factor` x capacity for `--seconds` (30), each call with a
   `--deadline` (1 s), no retries: goodput (OK/s) against capacity, p99 of admitted calls
   against the deadline, how shed calls were answered (RESOURCE_EXHAUSTED with
   grpc-retry-pushback-ms) and how fast;
3. recovery: arrivals at half the capacity for `--recovery-seconds`: how long until a
   half-second window answers >= 99% of its calls OK.

    tools/bench overload  [--seconds 30] [--factor 3] [--deadline 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc

from bench.get_product import cpu_seconds, seed
from bench.load import closed_loop
from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from libs.runtime.overload import PUSHBACK_KEY
from libs.runtime.processes import start_service


@dataclass
class Outcomes:
    """Every call of a phase: when it was sent (s from the phase start), its code and latency."""

    sent: list[float] = field(default_factory=list)
    codes: list[grpc.StatusCode] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    pushbacks: int = 0

    def latencies(self, code: grpc.StatusCode) -> list[float]:
        return sorted(ms for c, ms in zip(self.codes, self.latencies_ms, strict=True) if c == code)

    def count(self, code: grpc.StatusCode) -> int:
        return sum(1 for c in self.codes if c == code)


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


Call = Callable[[float | None], Awaitable[object]]


async def open_loop(
    rpc: Call,
    rate: float,
    seconds: float,
    deadline: float,
) -> Outcomes:
    """Sends calls at `rate`/s whatever happens to earlier ones (arrivals do not wait)."""
    outcomes = Outcomes()
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()

    async def call(sent_at: float) -> None:
        code = grpc.StatusCode.OK
        try:
            await rpc(deadline)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            trailers = cast("tuple[tuple[str, object], ...]", tuple(error.trailing_metadata()))
            if any(key == PUSHBACK_KEY for key, _ in trailers):
                outcomes.pushbacks += 1
        outcomes.sent.append(sent_at - start)
        outcomes.codes.append(code)
        outcomes.latencies_ms.append((time.perf_counter() - sent_at) * 1000)

    sent = 0
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * rate) - sent
        for _ in range(due):
            tasks.append(asyncio.create_task(call(time.perf_counter())))
        sent += max(0, due)
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    return outcomes


def recovery_seconds(outcomes: Outcomes, window: float = 0.5) -> float | None:
    """The end of the first `window` in which >= 99% of the calls sent were answered OK."""
    end = max(outcomes.sent, default=0.0)
    at = 0.0
    while at < end:
        codes = [
            c for s, c in zip(outcomes.sent, outcomes.codes, strict=True) if at <= s < at + window
        ]
        if codes and sum(1 for c in codes if c == grpc.StatusCode.OK) >= 0.99 * len(codes):
            return at + window
        at += window
    return None


async def side(label: str, protection: bool, args: argparse.Namespace, scratch: Path) -> None:
    server = await start_service(
        "services.catalog",
        {
            "CATALOG_DATABASE_URL": f"sqlite+aiosqlite:///{scratch / label}.sqlite3",
            "EMPORIUM_SECURITY": "insecure",
            "CATALOG_OVERLOAD_PROTECTION": "true" if protection else "false",
        },
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.CatalogServiceStub(channel)
            name = await seed(stub)
            get = pb.GetProductRequest(name=name)
            page = pb.ListProductsRequest(page_size=50)

            def rpc(timeout: float | None) -> Awaitable[object]:
                if args.method == "ListProducts":
                    return stub.ListProducts(page, timeout=timeout)
                return stub.GetProduct(get, timeout=timeout)

            print(f"{label}: measuring capacity ({args.capacity_seconds:g} s)", flush=True)
            answered = 0

            async def get_product() -> None:
                nonlocal answered
                with contextlib.suppress(grpc.aio.AioRpcError):  # a shed call is not capacity
                    await rpc(None)
                    answered += 1

            started = time.perf_counter()
            await closed_loop(
                "capacity",
                get_product,
                concurrency=args.concurrency,
                seconds=args.capacity_seconds,
                warmup=0.0,
            )
            capacity = answered / (time.perf_counter() - started)
            offered = args.factor * capacity
            print(f"{label}: offering {offered:.0f}/s of {args.method} for {args.seconds:g} s")
            cpu_before = cpu_seconds(server.process.pid)
            overload = await open_loop(rpc, offered, args.seconds, args.deadline)
            cpu = cpu_seconds(server.process.pid) - cpu_before
            print(f"{label}: back to {capacity / 2:.0f}/s for {args.recovery_seconds:g} s")
            recovery = await open_loop(rpc, capacity / 2, args.recovery_seconds, args.deadline)
    finally:
        await server.terminate()
    ok = overload.latencies(grpc.StatusCode.OK)
    shed = overload.latencies(grpc.StatusCode.RESOURCE_EXHAUSTED)
    expired = overload.count(grpc.StatusCode.DEADLINE_EXCEEDED)
    goodput = len(ok) / args.seconds
    recovered = recovery_seconds(recovery)
    print(
        f"\n{label}: capacity {capacity:.0f}/s; offered {len(overload.codes) / args.seconds:.0f}/s"
        f" ({len(overload.codes) / args.seconds / capacity:.1f}x); server CPU "
        f"{cpu / args.seconds:.0%} of a core\n"
        f"  goodput {goodput:.0f}/s = {goodput / capacity:.2f} of capacity (target >= 0.80: "
        f"{'met' if goodput >= 0.8 * capacity else 'NOT met'})\n"
        f"  admitted: p50 {percentile(ok, 0.5):.1f} ms, p99 {percentile(ok, 0.99):.1f} ms "
        f"(deadline {args.deadline * 1000:.0f} ms)\n"
        f"  shed: {len(shed)} RESOURCE_EXHAUSTED ({overload.pushbacks} with "
        f"{PUSHBACK_KEY}), p50 {percentile(shed, 0.5):.1f} ms, p99 {percentile(shed, 0.99):.1f} ms"
        f"\n  DEADLINE_EXCEEDED: {expired}; every code: "
        + ", ".join(f"{code.name} {n}" for code, n in Counter(overload.codes).most_common())
        + "\n"
        f"  recovery at {capacity / 2:.0f}/s: "
        + (f"a >= 99% OK half-second by {recovered:.1f} s" if recovered else "not within the phase")
    )


async def run(args: argparse.Namespace) -> None:
    print(
        f"{platform.node()} · {platform.machine()} · {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d %H:%M')} · load average "
        + ", ".join(f"{value:.1f}" for value in os.getloadavg())
    )
    with tempfile.TemporaryDirectory() as scratch:
        await side("protected", True, args, Path(scratch))
        if not args.skip_unprotected:
            await side("unprotected", False, args, Path(scratch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--recovery-seconds", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--deadline", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--skip-unprotected", action="store_true")
    # ListProducts (50 a page) costs the server several times what it costs the client, so one
    # client process can offer 3x the capacity where GetProduct's cannot.
    parser.add_argument("--method", choices=["GetProduct", "ListProducts"], default="GetProduct")
    args = parser.parse_args()
    if min(args.seconds, args.capacity_seconds, args.recovery_seconds, args.deadline) <= 0:
        parser.error("--seconds, --capacity-seconds, --recovery-seconds, --deadline must be > 0")
    if args.factor <= 0 or args.concurrency < 1:
        parser.error("--factor must be > 0 and --concurrency >= 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
