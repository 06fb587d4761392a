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
                       [--against COMMIT]

The broker is a private RabbitMQ node started for the run (its CPU is counted, all of its
processes); `--broker shared` uses a fresh vhost on the machine's broker instead, whose CPU
other work shares, so it is not counted.

`--against COMMIT` measures that commit's fleet first, the same way (its tree in a git
worktree, set up by its own tools/bench, measured by this very script copied in, on a broker
node of this run's making), then this tree's, and prints both and the ratio per process: how
much a change saved, on one machine, by one script. The two sides run one after the other, so
the host's speed is printed for each.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
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
async def broker(args: argparse.Namespace, scratch: Path) -> AsyncIterator[tuple[str, int | None]]:
    """An AMQP URL, and the process group whose CPU to count (None: shared, not counted)."""
    if args.broker_url:  # started by the run that asked for this one (--against)
        yield args.broker_url, args.broker_group
        return
    if args.broker == "shared":
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


@dataclass
class Measurement:
    """One run's figures: every round's total and the median round's detail (CPU ms per
    confirmed order by process), as printed and as `--report` writes them for `--against`."""

    database: str
    orders: int
    concurrency: int
    totals: list[float]
    cpu_ms: dict[str, float]
    kernel_share: dict[str, float]
    statements: dict[str, float]
    orders_per_second: float
    p50_ms: float
    p99_ms: float
    echo_ms: float
    speed_before: float
    speed_after: float
    taken: str  # when the measurement ended, and the load average then
    load_average: str
    shed: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.cpu_ms.values())


async def run(args: argparse.Namespace) -> Measurement:
    async with AsyncExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        amqp_url, broker_group = await stack.enter_async_context(broker(args, scratch))
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
    return Measurement(
        database=args.database,
        orders=args.orders,
        concurrency=args.concurrency,
        totals=totals,
        cpu_ms=cpu_ms,
        kernel_share={name: cpu.system / max(cpu.total, 1e-9) for name, cpu in used.items()},
        statements={
            name: (statements_after[name] - statements_before.get(name, 0)) / measured
            for name in statements_after
        },
        orders_per_second=args.orders / elapsed,
        p50_ms=created.percentile(0.5),
        p99_ms=created.percentile(0.99),
        echo_ms=echo_ms,
        speed_before=speed_before,
        speed_after=speed_after,
        taken=time.strftime("%Y-%m-%d %H:%M"),
        load_average=", ".join(f"{value:.1f}" for value in os.getloadavg()),
        shed={
            name: str(reports[-1]["refused"])
            for name, process in running.items()
            # cumulative counts: the last report of the run (at most one a second)
            if (reports := [r for r in process.log_lines if r.get("message") == "shedding load"])
        },
    )


def report(m: Measurement, title: str = "") -> None:
    print(
        f"\n{title}{platform.node()} · {platform.machine()} · {os.cpu_count()} cores · "
        f"{m.taken} · {m.database} · {len(m.totals)} rounds of "
        f"{m.orders} orders at {m.concurrency} concurrent · load average {m.load_average}"
    )
    print(host_speed.line(("before the rounds", m.speed_before), ("after them", m.speed_after)))
    print("total CPU ms per order by round: " + ", ".join(f"{total:.2f}" for total in m.totals))
    print("the round with the median total, per process:")
    print(f"{'process':<16} {'CPU ms/order':>12} {'in the kernel':>14} {'statements/order':>17}")
    for name in sorted(m.cpu_ms, key=lambda n: -m.cpu_ms[n]):
        counted = f"{m.statements[name]:17.1f}" if name in m.statements else f"{'-':>17}"
        print(f"{name:<16} {m.cpu_ms[name]:12.2f} {m.kernel_share[name]:14.0%} {counted}")
    kernel = sum(m.kernel_share[n] * m.cpu_ms[n] for n in m.cpu_ms) / max(m.total, 1e-9)
    print(f"{'total':<16} {m.total:12.2f} {kernel:14.0%} {sum(m.statements.values()):17.1f}")
    print(
        f"confirmed orders/s {m.orders_per_second:.1f} · CreateOrder p50 "
        f"{m.p50_ms:.1f} ms p99 {m.p99_ms:.1f} ms"
    )
    for name, refused in m.shed.items():
        print(f"{name} shed load: {refused} refused, by rule")
    print(
        f"bare grpc.aio echo: {m.echo_ms * 1000:.0f} µs CPU per call; an order costs "
        f"{m.total / m.echo_ms:.0f} echo calls (target total <= 20 ms: "
        f"{'met' if m.total <= 20 else 'NOT met'})"
    )


# What --against copies into the other commit's tree: this script and what it imports from
# bench/, so both sides are measured by the same code.
REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("orders.py", "host_speed.py", "load.py", "echo_server.py")


async def measure_at(revision: str, args: argparse.Namespace, scratch: Path) -> Measurement:
    """The same measurement of another commit's fleet: its tree checked out in a worktree,
    set up by its own tools/bench, measured by this script, on a broker node this run starts
    (so the broker's set-up is the same on both sides)."""
    commit = await output("git", "-C", str(REPO), "rev-parse", "--verify", f"{revision}^{{commit}}")
    tree = scratch / f"tree-{commit[:12]}"
    await output("git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit)
    try:
        for name in SCRIPTS:
            shutil.copy2(REPO / "bench" / name, tree / "bench" / name)
        async with broker(args, scratch / "against") as (url, group):
            result = scratch / "against.json"
            command = [str(tree / "tools" / "bench"), "orders", *forwarded(args)]
            command += ["--broker-url", url, "--report", str(result)]
            if group is not None:
                command += ["--broker-group", str(group)]
            print(f"measuring {revision} ({commit[:12]}), its set-up first ...", flush=True)
            child = await asyncio.create_subprocess_exec(*command)
            if await child.wait() != 0:
                raise SystemExit(
                    f"the bench could not measure {revision}: it exited with "
                    f"{child.returncode} (its output is above)"
                )
            return Measurement(**json.loads(result.read_text()))
    finally:
        await output("git", "-C", str(REPO), "worktree", "remove", "--force", str(tree))


async def output(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {err.decode().strip()}")
    return out.decode().strip()


def forwarded(args: argparse.Namespace) -> list[str]:
    """The options that shape the measurement, for the other side's run."""
    return [
        f"--orders={args.orders}",
        f"--warmup={args.warmup}",
        f"--rounds={args.rounds}",
        f"--concurrency={args.concurrency}",
        f"--database={args.database}",
        f"--within={args.within}",
    ]


def compare(theirs: Measurement, ours: Measurement, revision: str) -> None:
    print(f"\nCPU ms per confirmed order, the median round: {revision} against this tree")
    print(f"{'process':<16} {revision[:12]:>12} {'this tree':>12} {'less CPU':>9}")
    for name in sorted(set(theirs.cpu_ms) | set(ours.cpu_ms), key=lambda n: -ours.cpu_ms.get(n, 0)):
        before, after = theirs.cpu_ms.get(name, 0.0), ours.cpu_ms.get(name, 0.0)
        ratio = f"{before / after:8.2f}x" if after >= 0.05 else f"{'-':>9}"
        print(f"{name:<16} {before:12.2f} {after:12.2f} {ratio}")
    print(
        f"{'total':<16} {theirs.total:12.2f} {ours.total:12.2f} {theirs.total / ours.total:8.2f}x"
    )
    print(
        f"confirmed orders/s {theirs.orders_per_second:.1f} -> {ours.orders_per_second:.1f}"
        f" ({ours.orders_per_second / theirs.orders_per_second:.2f}x) · CreateOrder p50"
        f" {theirs.p50_ms:.0f} -> {ours.p50_ms:.0f} ms · echo {theirs.echo_ms * 1000:.0f} and"
        f" {ours.echo_ms * 1000:.0f} µs · host speed {theirs.speed_before:.2f}-"
        f"{theirs.speed_after:.2f} s and {ours.speed_before:.2f}-{ours.speed_after:.2f} s"
        " (the sides ran one after the other: a host that changed speed between them moves"
        " the ratio)"
    )


async def bench(args: argparse.Namespace) -> Measurement:
    theirs = None
    if args.against:
        with tempfile.TemporaryDirectory() as scratch:
            theirs = await measure_at(args.against, args, Path(scratch))
        print("measuring this tree ...", flush=True)
    ours = await run(args)
    if args.report:  # the figures go to the run that asked for them
        return ours
    if theirs is not None:
        report(theirs, f"{args.against}: ")
    report(ours, "this tree: " if theirs is not None else "")
    if theirs is not None:
        compare(theirs, ours, args.against)
    return ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (median shown)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--broker", choices=("private", "shared"), default="private")
    parser.add_argument("--within", type=float, default=300.0, help="s to wait for CONFIRMED")
    parser.add_argument(
        "--against",
        metavar="COMMIT",
        help="also measure this commit's fleet first, the same way, and print the ratios",
    )
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="write the figures as JSON instead of printing them (for --against)",
    )
    parser.add_argument("--broker-url", help="a broker started by the caller (--against)")
    parser.add_argument("--broker-group", type=int, help="its process group, to count its CPU")
    args = parser.parse_args()
    if args.orders < 1 or args.concurrency < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--orders, --concurrency and --rounds must be at least 1, --warmup >= 0")
    measured = asyncio.run(bench(args))
    if args.report:
        Path(args.report).write_text(json.dumps(dataclasses.asdict(measured)))


if __name__ == "__main__":
    main()
