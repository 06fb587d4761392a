"""The gateway's cost, in one run: `GET /v1/products/{id}` through the gateway against a minimal
hand-written Starlette route making the same gRPC call (bench/starlette_baseline.py), and against
calling catalog over gRPC directly; then the gateway → orders → catalog + inventory chain
(CreateOrder with an Idempotency-Key, as a customer). Every server is its own process on
loopback, plaintext. HTTP load comes from wrk (C, one thread), gRPC load and the order chain
from this process (grpc.aio, httpx; closed loop).

    tools/bench gateway  [--seconds 10] [--concurrency 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import httpx

from bench.load import Result, closed_loop, faster, ratio_line, wrk
from emporium.catalog.v1 import catalog_service_pb2 as catalog_pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.processes import ServiceProcess, start_service
from libs.testing.broker import fresh_vhost
from services.catalog.seed import SAMPLES
from tools.commands.run import fleet

PRODUCT = f"products/{SAMPLES[0][0].lower()}"
UNLIMITED = {
    "GATEWAY_RATE_READ_PER_SECOND": "1000000",
    "GATEWAY_RATE_READ_BURST": "1000000",
    "GATEWAY_RATE_WRITE_PER_SECOND": "1000000",
    "GATEWAY_RATE_WRITE_BURST": "1000000",
}


async def start_fleet(
    directory: Path, amqp_url: str, stack: AsyncExitStack
) -> dict[str, ServiceProcess]:
    """The fleet as `tools/run` starts it (plaintext, free ports, the gateway's response cache
    off), plus a second gateway with its cache on and the hand-written baseline."""
    registry = LocalRegistry(directory / "registry.json")
    running = await fleet.start_fleet(
        directory,
        amqp_url,
        registry,
        security="insecure",
        free_ports=True,
        env_overrides={
            "payments": {"PAYMENTS_PROVIDER_LATENCY_SECONDS": "0"},
            "gateway": {**UNLIMITED, "GATEWAY_CACHE_TTL_SECONDS": "0"},
        },
        echo_log=False,
    )
    for process in running.values():
        stack.push_async_callback(process.terminate)
    gateway_env = {
        "GATEWAY_PORT": "0",
        "GATEWAY_SECURITY": "insecure",
        "GATEWAY_REGISTRY_FILE": str(registry.path),
        **UNLIMITED,
    }
    extra = (
        ("gateway (cached)", "services.gateway", gateway_env),
        ("starlette", "bench.starlette_baseline", {"CATALOG_TARGET": running["catalog"].address}),
    )
    for name, module, env in extra:
        running[name] = await start_service(module, env)
        stack.push_async_callback(running[name].terminate)
    return running


async def http_get(label: str, address: str, args: argparse.Namespace) -> Result:
    return await wrk(
        label, f"http://{address}/v1/{PRODUCT}", concurrency=args.concurrency, seconds=args.seconds
    )


async def direct_grpc(address: str, args: argparse.Namespace) -> Result:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = catalog_grpc.CatalogServiceStub(channel)
        request = catalog_pb.GetProductRequest(name=PRODUCT)
        return await closed_loop(
            "catalog direct (gRPC)",
            lambda: stub.GetProduct(request),
            concurrency=args.concurrency,
            seconds=args.seconds,
        )


async def order_chain(running: dict[str, ServiceProcess], args: argparse.Namespace) -> Result:
    async with grpc.aio.insecure_channel(running["inventory"].address) as channel:
        adjust = inventory_grpc.InventoryServiceStub(channel).AdjustStock(None)
        item = "inventory/items/" + PRODUCT.removeprefix("products/")
        await adjust.write(inventory_pb.AdjustStockRequest(item=item, delta=1_000_000))
        await adjust.read()
        await adjust.done_writing()
    base = f"http://{running['gateway'].address}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        await http.post(
            "/v1/users", params={"user_id": "bench"}, json={"password": "bench-password"}
        )
        token = (
            await http.post(
                "/v1/token",
                json={"grant_type": "password", "username": "bench", "password": "bench-password"},
            )
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        order = {"customer": "customers/bench", "lines": [{"product": PRODUCT, "quantity": 1}]}

        async def create() -> None:
            response = await http.post(
                "/v1/orders", json=order, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
            )
            response.raise_for_status()

        return await closed_loop(
            "CreateOrder gateway→orders→inventory",
            create,
            concurrency=args.concurrency,
            seconds=args.seconds,
        )


def cpu_seconds(process: ServiceProcess) -> float:
    """User + system CPU the process has used (Linux /proc)."""
    fields = Path(f"/proc/{process.process.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace) -> None:
    best: dict[str, Result] = {}
    ratios: list[float] = []  # gateway / hand-written, per round (measured back to back)
    cpu_per_request: dict[str, list[float]] = {"starlette": [], "gateway": []}
    async with AsyncExitStack() as stack:
        amqp_url = await stack.enter_async_context(fresh_vhost())
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print("starting the fleet, a second gateway and the Starlette baseline ...", flush=True)
        running = await start_fleet(scratch, amqp_url, stack)

        async def measure(label: str, name: str) -> Result:
            before = cpu_seconds(running[name])
            result = await http_get(label, running[name].address, args)
            if name in cpu_per_request:
                used = cpu_seconds(running[name]) - before
                cpu_per_request[name].append(used / max(1, result.calls) * 1e6)
            return result

        for round_number in range(args.rounds):
            print(f"round {round_number + 1}/{args.rounds} ...", flush=True)
            baseline = await measure("hand-written Starlette route", "starlette")
            gateway = await measure("gateway (cache off)", "gateway")
            ratios.append(gateway.rate / baseline.rate)
            cached = await measure("gateway (cache on)", "gateway (cached)")
            direct = await direct_grpc(running["catalog"].address, args)
            for label, result in (
                ("starlette", baseline),
                ("gateway", gateway),
                ("cached", cached),
                ("direct", direct),
            ):
                best[label] = faster(result, best.get(label, result))
        chain = await order_chain(running, args)
    print(
        f"\n{platform.node()} · {platform.processor() or platform.machine()} · "
        f"{time.strftime('%Y-%m-%d')} · concurrency {args.concurrency} · {args.seconds}s · "
        f"best of {args.rounds} rounds"
    )
    for label in ("direct", "starlette", "gateway", "cached"):
        print(best[label].line())
    print(chain.line("orders/s"))
    for name, samples in cpu_per_request.items():
        print(f"{name + ' CPU per request':<34} {statistics.median(samples):9.0f} µs (median)")
    print(
        f"{'gateway / hand-written, per round':<34} " + " ".join(f"{ratio:.3f}" for ratio in ratios)
    )
    print(ratio_line("gateway / hand-written (median)", statistics.median(ratios), 1.0, target=0.9))
    print(ratio_line("cached gateway / hand-written", best["cached"].rate, best["starlette"].rate))
    print(ratio_line("gateway / catalog direct", best["gateway"].rate, best["direct"].rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
