"""What a confirmed order costs the fleet: CreateOrder through the gateway at a fixed
concurrency, then wait until every order is CONFIRMED with its payment CAPTURED and every
notification delivered, and report per process the CPU spent per confirmed order
(/proc/<pid>/stat utime + stime deltas; RabbitMQ's too, from a private node), the SQL
statements per order (each service's `db.client.statements`, scraped from its metrics
endpoint), orders/s and the CreateOrder p50/p99; plus a bare grpc.aio echo's CPU per call,
measured in the same run, as the yardstick, and the host's speed before and after the rounds
(bench/host_speed.py: on a shared virtual machine it moves, and every figure with it). The
fleet is the one `tools/run` starts (plaintext, free ports, payments' provider latency 0, the
gateway's limits and cache off), on SQLite (the default) or PostgreSQL.

    tools/bench orders [--orders 300] [--rounds 3] [--concurrency 16]
                       [--database sqlite|postgres] [--broker private|shared]

The broker is a private RabbitMQ node started for the run (its CPU is counted, all of its
processes); `--broker shared` uses a fresh vhost on the machine's broker instead, whose CPU
other work shares, so it is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import NamedTuple

import grpc
import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bench import host_speed
from bench.load import Result, closed_loop
from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from libs.messaging.local_broker import LocalBroker
from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.processes import ServiceProcess, start_service
from libs.testing.broker import fresh_vhost
from libs.testing.databases import fresh_postgres_database
from services.catalog.seed import SAMPLES
from services.orders.domain.model import OrderState, PaymentState
from tools.commands.run import fleet

PRODUCT = f"products/{SAMPLES[0][0].lower()}"
DATABASES = ("identity", "catalog", "inventory", "orders", "payments", "notifications")
UNLIMITED = {
    "GATEWAY_RATE_READ_PER_SECOND": "1000000",
    "GATEWAY_RATE_READ_BURST": "1000000",
    "GATEWAY_RATE_WRITE_PER_SECOND": "1000000",
    "GATEWAY_RATE_WRITE_BURST": "1000000",
    "GATEWAY_CACHE_TTL_SECONDS": "0",
}
MAILS = 2  # per confirmed order: "we received your order", "your order is confirmed"
STATEMENTS = re.compile(r"^db_client_statements_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


class Cpu(NamedTuple):
    """CPU seconds used, in user space and in the kernel (Linux /proc/<pid>/stat)."""

    user: float
    system: float

    def __sub__(self, other: tuple[float, ...]) -> Cpu:
        return Cpu(self.user - other[0], self.system - other[1])

    @property
    def total(self) -> float:
        return self.user + self.system


def _stat(path: Path) -> list[str]:
    return path.read_text().rpartition(")")[2].split()


def cpu_seconds(process: ServiceProcess) -> Cpu:
    fields = _stat(Path(f"/proc/{process.process.pid}/stat"))
    tick = os.sysconf("SC_CLK_TCK")
    return Cpu(int(fields[11]) / tick, int(fields[12]) / tick)


def group_cpu_seconds(group: int) -> Cpu:
    """CPU of every live process in process group `group` (a broker node: beam.smp, epmd,
    erl_child_setup, ...), with what their exited children used."""
    user = system = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = _stat(stat)
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == group:
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    tick = os.sysconf("SC_CLK_TCK")
    return Cpu(user / tick, system / tick)


@asynccontextmanager
async def broker(kind: str, scratch: Path) -> AsyncIterator[tuple[str, int | None]]:
    """An AMQP URL, and the process group whose CPU to count (None: shared, not counted)."""
    if kind == "shared":
        async with fresh_vhost() as url:
            yield url, None
        return
    node = LocalBroker(scratch / "rabbitmq")
    print("starting a private RabbitMQ node ...", flush=True)
    await node.start()
    try:
        yield node.url, node.process_group
    finally:
        await node.stop()


async def statements(http: httpx.AsyncClient, running: dict[str, ServiceProcess]) -> dict[str, int]:
    """Statements each service has sent so far (absent when it exports no such metric)."""
    counts: dict[str, int] = {}
    for name, process in running.items():
        address = fleet.metrics_address(process)
        if address is None:
            continue
        text = (await http.get(f"http://{address}/metrics")).text
        found = STATEMENTS.findall(text)
        if found:
            counts[name] = int(sum(float(value) for value in found))
    return counts


@asynccontextmanager
async def database_urls(kind: str, var: Path) -> AsyncIterator[dict[str, str]]:
    """Each service's database URL: the launcher's SQLite files, or fresh PostgreSQL databases."""
    if kind == "sqlite":
        specs = {spec.name: spec.env for spec in fleet.services(var)}
        yield {name: specs[name][f"{name.upper()}_DATABASE_URL"] for name in DATABASES}
        return
    async with AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(fresh_postgres_database()) for name in DATABASES
        }


async def settled(orders_url: str) -> int:
    """Orders at the end of their path: CONFIRMED and the payment CAPTURED."""
    engine = create_async_engine(orders_url)
    try:
        async with engine.connect() as connection:
            query = sa.text(
                "SELECT count(*) FROM orders WHERE state = :state AND payment_state = :payment"
            )
            value = await connection.scalar(
                query,
                {"state": OrderState.CONFIRMED.value, "payment": PaymentState.CAPTURED.value},
            )
            return int(value or 0)
    finally:
        await engine.dispose()


def delivered(mail: Path) -> int:
    return sum(1 for _ in (mail / "new").iterdir()) if (mail / "new").exists() else 0


def check_alive(running: dict[str, ServiceProcess]) -> None:
    """Stops the bench at once, with the service's last words, when one has exited."""
    for name, service in running.items():
        code = service.process.returncode
        if code is not None:
            raise SystemExit(
                f"{name} exited with code {code}; its last log lines:\n{service.last_lines()}"
            )


async def wait_settled(
    orders_url: str,
    count: int,
    mail: Path,
    notifications: int,
    within: float,
    running: dict[str, ServiceProcess],
) -> None:
    """Until `count` orders are settled and `notifications` mails delivered (polling the
    orders database and the maildir: the bench observes, it does not ask the services)."""
    deadline = time.monotonic() + within
    while (done := await settled(orders_url)) < count or delivered(mail) < notifications:
        check_alive(running)
        if time.monotonic() > deadline:
            raise SystemExit(
                f"after {within:.0f} s: {done} of {count} orders CONFIRMED and CAPTURED, "
                f"{delivered(mail)} of {notifications} notifications delivered"
            )
        await asyncio.sleep(0.2)


async def echo_cpu_per_call(args: argparse.Namespace) -> float:
    server = await start_service("bench.echo_server", {})
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            echo = channel.unary_unary("/bench.Echo/Echo", None, None)
            payload = b"x" * 64
            before = cpu_seconds(server).total
            result = await closed_loop(
                "echo", lambda: echo(payload), concurrency=args.concurrency, seconds=3, warmup=0
            )
            return (cpu_seconds(server).total - before) * 1000 / max(1, result.calls)
    finally:
        await server.terminate()


async def place_orders(
    gateway: str, count: int, concurrency: int, http: httpx.AsyncClient, bearer: str
) -> Result:
    headers = {"Authorization": f"Bearer {bearer}"}
    order = {"customer": "customers/bench", "lines": [{"product": PRODUCT, "quantity": 1}]}
    remaining = iter(range(count))
    latencies: list[float] = []
    start = time.perf_counter()

    shed: Counter[str] = Counter()

    async def worker() -> None:
        for _ in remaining:
            began = time.perf_counter()
            key = {"Idempotency-Key": str(uuid.uuid4())}
            # A shed request (503 with Retry-After) is sent again after the wait it names, with
            # the same key, as a well-behaved client would; the order counts once.
            while (
                response := await http.post(
                    f"http://{gateway}/v1/orders", json=order, headers={**headers, **key}
                )
            ).status_code == 503 and "Retry-After" in response.headers:
                shed[response.json().get("detail", "")] += 1
                await asyncio.sleep(float(response.headers["Retry-After"]))
            response.raise_for_status()
            latencies.append((time.perf_counter() - began) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for detail, times in shed.items():
        print(f"  shed {times} times (503, sent again after Retry-After): {detail}", flush=True)
    return Result("CreateOrder", count, time.perf_counter() - start, latencies)


async def token(http: httpx.AsyncClient, gateway: str) -> str:
    base = f"http://{gateway}"
    await http.post(
        f"{base}/v1/users", params={"user_id": "bench"}, json={"password": "bench-pw-1"}
    )
    response = await http.post(
        f"{base}/v1/token",
        json={"grant_type": "password", "username": "bench", "password": "bench-pw-1"},
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


async def stock_up(inventory: str) -> None:
    async with grpc.aio.insecure_channel(inventory) as channel:
        adjust = inventory_grpc.InventoryServiceStub(channel).AdjustStock(None)
        item = "inventory/items/" + PRODUCT.removeprefix("products/")
        await adjust.write(inventory_pb.AdjustStockRequest(item=item, delta=1_000_000))
        await adjust.read()
        await adjust.done_writing()


async def run(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        amqp_url, broker_group = await stack.enter_async_context(broker(args.broker, scratch))
        urls = await stack.enter_async_context(database_urls(args.database, scratch))
        overrides: dict[str, dict[str, str]] = {
            name: {f"{name.upper()}_DATABASE_URL": url} for name, url in urls.items()
        }
        overrides["payments"]["PAYMENTS_PROVIDER_LATENCY_SECONDS"] = "0"
        overrides["gateway"] = UNLIMITED
        print(f"starting the fleet on {args.database} ...", flush=True)
        running = await fleet.start_fleet(
            scratch,
            amqp_url,
            LocalRegistry(scratch / "registry.json"),
            security="insecure",
            free_ports=True,
            env_overrides=overrides,
            echo_log=False,
        )
        for process in running.values():
            stack.push_async_callback(process.terminate)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=60))
        await stock_up(running["inventory"].address)
        gateway = running["gateway"].address
        print(f"warm-up: {args.warmup} orders ...", flush=True)
        mail = scratch / "mail"
        # The customer signs up and gets a token once, before anything is measured: two
        # Argon2 computations (about 0.3 s of identity's CPU, 1.4 ms per order of a 200-order
        # run) are the cost of a login, not of an order.
        bearer = await token(http, gateway)
        await place_orders(gateway, args.warmup, args.concurrency, http, bearer)
        await wait_settled(
            urls["orders"], args.warmup, mail, MAILS * args.warmup, args.within, running
        )

        def cpu_now() -> dict[str, Cpu]:
            used = {name: cpu_seconds(process) for name, process in running.items()}
            if broker_group is not None:
                used["rabbitmq"] = group_cpu_seconds(broker_group)
            return used

        # Several rounds on the same fleet, each measured alone: the machine's neighbours make
        # one round differ from the next by up to a quarter; the round with the median total
        # is reported, with every round's total beside it.
        rounds: list[tuple[dict[str, Cpu], Result, float]] = []
        speed_before = host_speed.loop_seconds()  # the fleet is idle: warmed up, settled
        statements_before = await statements(http, running)
        placed = args.warmup
        for round_number in range(1, args.rounds + 1):
            print(
                f"round {round_number}/{args.rounds}: {args.orders} orders at "
                f"{args.concurrency} concurrent ...",
                flush=True,
            )
            before = cpu_now()
            started = time.perf_counter()
            created = await place_orders(gateway, args.orders, args.concurrency, http, bearer)
            placed += args.orders
            await wait_settled(urls["orders"], placed, mail, MAILS * placed, args.within, running)
            elapsed = time.perf_counter() - started
            after = cpu_now()
            rounds.append(({name: after[name] - before[name] for name in after}, created, elapsed))
        statements_after = await statements(http, running)
        speed_after = host_speed.loop_seconds()
        echo_ms = await echo_cpu_per_call(args)
    totals = [sum(cpu.total for cpu in used.values()) * 1000 / args.orders for used, _, _ in rounds]
    used, created, elapsed = rounds[
        sorted(range(len(rounds)), key=totals.__getitem__)[len(rounds) // 2]
    ]
    cpu_ms = {name: cpu.total * 1000 / args.orders for name, cpu in used.items()}
    measured = args.orders * args.rounds
    per_order = {
        name: (statements_after[name] - statements_before.get(name, 0)) / measured
        for name in statements_after
    }
    load_average = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"\n{platform.node()} · {platform.machine()} · {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d %H:%M')} · {args.database} · {args.rounds} rounds of "
        f"{args.orders} orders at {args.concurrency} concurrent · load average {load_average}"
    )
    print(host_speed.line(("before the rounds", speed_before), ("after them", speed_after)))
    print("total CPU ms per order by round: " + ", ".join(f"{total:.2f}" for total in totals))
    print("the round with the median total, per process:")
    print(f"{'process':<16} {'CPU ms/order':>12} {'in the kernel':>14} {'statements/order':>17}")
    for name in sorted(cpu_ms, key=lambda n: -cpu_ms[n]):
        counted = f"{per_order[name]:17.1f}" if name in per_order else f"{'-':>17}"
        kernel = used[name].system / max(used[name].total, 1e-9)
        print(f"{name:<16} {cpu_ms[name]:12.2f} {kernel:14.0%} {counted}")
    total = sum(cpu_ms.values())
    kernel = sum(cpu.system for cpu in used.values()) / max(
        sum(c.total for c in used.values()), 1e-9
    )
    print(f"{'total':<16} {total:12.2f} {kernel:14.0%} {sum(per_order.values()):17.1f}")
    print(
        f"confirmed orders/s {args.orders / elapsed:.1f} · CreateOrder p50 "
        f"{created.percentile(0.5):.1f} ms p99 {created.percentile(0.99):.1f} ms"
    )
    for name, process in running.items():
        reports = [line for line in process.log_lines if line.get("message") == "shedding load"]
        if reports:  # cumulative counts, the last report of the run (at most one a second)
            print(f"{name} shed load: {reports[-1]['refused']} refused, by rule")
    print(
        f"bare grpc.aio echo: {echo_ms * 1000:.0f} µs CPU per call; an order costs "
        f"{total / echo_ms:.0f} echo calls (target total <= 20 ms: "
        f"{'met' if total <= 20 else 'NOT met'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (median shown)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--broker", choices=("private", "shared"), default="private")
    parser.add_argument("--within", type=float, default=300.0, help="s to wait for CONFIRMED")
    args = parser.parse_args()
    if args.orders < 1 or args.concurrency < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--orders, --concurrency and --rounds must be at least 1, --warmup >= 0")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
