"""Overload: 3x the measured capacity for 30 s, with and without overload protection, in one run.

Two targets (`--target`, both by default), each measured protected and unprotected
(`<SERVICE>_OVERLOAD_PROTECTION`), each side on fresh processes:

- `orders`: the order path. CreateOrder over HTTP through the gateway to orders, which calls
  catalog and inventory and stores the order with its outbox (payments and notifications work
  the saga behind it): the fleet as `tools/run` starts it (bench/orders.py's settings:
  plaintext, SQLite, payments' provider latency 0, the gateway's rate limits and cache off), the
  gateway's request budget set to the deadline;
- `catalog`: catalog's GetProduct (or `--method ListProducts`, 50 a page) over gRPC, catalog
  alone (SQLite). GetProduct costs the server about 0.3 ms, about three times what the generator
  spends per call: offering 3x its capacity takes the generator more than a core of the two.

Phases per side: capacity (closed loop: `--concurrency` callers back to back for
`--capacity-seconds`, 16, 64 then 256, after a warm-up; the best rate is the capacity), then a
pause until the servers are idle again; then open-loop arrivals at `--factor` x that capacity for
`--seconds`, every call with the `--deadline` and no retries, followed at once by half the
capacity for `--recovery-seconds`. The load comes from `--processes` client processes
(bench/generator.py), so the generator's CPU is its own and printed with the servers'.

Printed per side: capacity; offered; goodput (OK answers of calls sent during the overload) as a
fraction of capacity; admitted calls' p50/p99 against the deadline; shed calls
(RESOURCE_EXHAUSTED or 503) and how many carried a retry hint (`grpc-retry-pushback-ms`,
`Retry-After`), with how fast they reached the client; DEADLINE_EXCEEDED (and client timeouts)
and UNAVAILABLE; recovery (from the drop to half capacity, the end of the first half second in
which >= 99% of calls succeeded); CPU of the servers and of the generator, and the machine's idle
CPU, in the overload and in the capacity phase, with the orders (calls) served per server core in
the overload against the capacity phase's: near 1, a goodput short of capacity is cores the
servers did not get (the generator shares the machine), not work the protection wasted; and the
host's speed before the capacity phase and before the overload (bench/host_speed.py): when it
moved between them, so did the goodput's denominator.

    tools/bench overload [--target orders|catalog|both] [--seconds 30] [--factor 3]
                         [--processes 3] [--deadline S (orders 2, catalog 1)]
                         [--method GetProduct|ListProducts (catalog)]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from bench import generator, host_speed
from bench.generator import CLIENT_TIMEOUT, HTTP, Phase, Target, code_name, ok
from bench.get_product import seed
from bench.orders import PRODUCT, UNLIMITED, stock_up, token
from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.processes import ServiceProcess, start_service
from libs.testing.broker import fresh_vhost
from tools.commands.run import fleet

SHED = {8, HTTP + 503}  # RESOURCE_EXHAUSTED, 503
EXPIRED = {4, HTTP + 504}  # DEADLINE_EXCEEDED (or the client gave up at the deadline), 504
UNAVAILABLE = {14}
SERVICES = ("identity", "catalog", "inventory", "orders", "payments", "notifications", "gateway")


def percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class Servers:
    """What the generator calls, and the processes whose CPU counts as the servers'."""

    target: Target
    processes: dict[str, ServiceProcess]


@asynccontextmanager
async def catalog(protection: bool, scratch: Path, method: str) -> AsyncIterator[Servers]:
    server = await start_service(
        "services.catalog",
        {
            "CATALOG_DATABASE_URL": f"sqlite+aiosqlite:///{scratch / 'catalog'}.sqlite3",
            "EMPORIUM_SECURITY": "insecure",
            "CATALOG_OVERLOAD_PROTECTION": str(protection).lower(),
        },
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            name = await seed(pb_grpc.CatalogServiceStub(channel))
        request = (
            pb.ListProductsRequest(page_size=50)
            if method == "ListProducts"
            else pb.GetProductRequest(name=name)
        )
        target = Target(
            "grpc",
            server.address,
            f"/emporium.catalog.v1.CatalogService/{method}",
            request.SerializeToString(),
            channels_per_process=4,  # 1,000 streams per connection: room for 10,000+ in flight
        )
        yield Servers(target, {"catalog": server})
    finally:
        await server.terminate()


@asynccontextmanager
async def order_path(protection: bool, scratch: Path, deadline: float) -> AsyncIterator[Servers]:
    async with AsyncExitStack() as stack:
        amqp_url = await stack.enter_async_context(fresh_vhost())
        flag = str(protection).lower()
        overrides = {name: {f"{name.upper()}_OVERLOAD_PROTECTION": flag} for name in SERVICES}
        overrides["payments"]["PAYMENTS_PROVIDER_LATENCY_SECONDS"] = "0"
        overrides["gateway"].update(UNLIMITED)
        # The gateway's budget for a request (its upstream calls' deadline) is the client's.
        overrides["gateway"]["GATEWAY_REQUEST_TIMEOUT_SECONDS"] = str(deadline)
        running = await fleet.start_fleet(
            scratch,
            amqp_url,
            LocalRegistry(scratch / "registry.json"),
            security="insecure",
            free_ports=True,
            env_overrides=overrides,
            echo_log=False,
        )
        stack.push_async_callback(fleet.stop_fleet, running, frozenset({"gateway"}))
        await stock_up(running["inventory"].address)
        gateway = running["gateway"].address
        async with httpx.AsyncClient(timeout=30) as http:
            bearer = await token(http, gateway)
        order = {"customer": "customers/bench", "lines": [{"product": PRODUCT, "quantity": 1}]}
        target = Target(
            "http",
            gateway,
            "/v1/orders",
            json.dumps(order).encode(),
            headers=(("Authorization", f"Bearer {bearer}"),),
            unique_header="Idempotency-Key",
        )
        yield Servers(target, running)


def idle_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent idle so far, all cores (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle + iowait


class CpuMeter:
    """The servers' CPU at each phase boundary (/proc), the machine's idle CPU, and how many log
    lines each server had logged by then, for generator.run's `at_phase`."""

    def __init__(self, processes: dict[str, ServiceProcess]) -> None:
        self.processes = processes
        self.pids = {name: process.process.pid for name, process in processes.items()}
        self.readings: list[dict[str, float]] = []
        self.idle: list[float] = []
        self.log_lines: list[dict[str, int]] = []

    async def __call__(self, phase: int) -> None:
        self.readings.append({name: generator.cpu_seconds(pid) for name, pid in self.pids.items()})
        self.idle.append(idle_cpu_seconds())
        self.log_lines.append({name: len(p.log_lines) for name, p in self.processes.items()})

    def refused(self, phase: int) -> dict[str, dict[str, int]]:
        """Each server's refusals by rule during `phase`, from its "shedding load" log lines
        (cumulative counts, at most one a second: the last second of the phase may be missing)."""
        counts = {}
        for name, process in self.processes.items():
            reports = [
                (index, line["refused"])
                for index, line in enumerate(process.log_lines[: self.log_lines[phase + 1][name]])
                if line.get("message") == "shedding load"
            ]
            if not reports:
                continue
            before = [r for i, r in reports if i < self.log_lines[phase][name]]
            start: dict[str, int] = before[-1] if before else {}  # type: ignore[assignment]
            end: dict[str, int] = reports[-1][1]  # type: ignore[assignment]
            counts[name] = {rule: n - start.get(rule, 0) for rule, n in end.items()}
        return counts

    def used(self, phase: int) -> dict[str, float]:
        before, after = self.readings[phase], self.readings[phase + 1]
        return {name: after[name] - before[name] for name in before}

    def idle_during(self, phase: int) -> float:
        return self.idle[phase + 1] - self.idle[phase]


async def settle(processes: dict[str, ServiceProcess], within: float = 120.0) -> None:
    """Returns once the servers use less than 0.15 of a core together over a second."""
    pids = [process.process.pid for process in processes.values()]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = sum(generator.cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(1.0)
        if sum(generator.cpu_seconds(pid) for pid in pids) - before < 0.15:
            return
    print(f"(the servers were still busy after {within:g} s; going on)", flush=True)


def recovery(rows: list[tuple[float, float, float, int, bool]], start: float) -> float | None:
    """Seconds from `start` to the end of the first half second whose calls were >= 99% OK."""
    windows: dict[int, list[bool]] = {}
    for due, _, _, code, _ in rows:
        windows.setdefault(int((due - start) / 0.5), []).append(ok(code))
    for index in sorted(windows):
        outcomes = windows[index]
        if sum(outcomes) >= 0.99 * len(outcomes):
            return (index + 1) * 0.5
    return None


async def side(
    label: str, target_name: str, protection: bool, args: argparse.Namespace, scratch: Path
) -> dict[str, object]:
    deadline = args.deadline or (2.0 if target_name == "orders" else 1.0)
    directory = scratch / f"{target_name}-{label}"
    directory.mkdir()
    servers_of = (
        order_path(protection, directory, deadline)
        if target_name == "orders"
        else catalog(protection, directory, args.method)
    )
    async with servers_of as servers:
        speed_at_capacity = host_speed.loop_seconds()  # the servers are idle: just started
        print(f"{target_name} {label}: capacity at {args.concurrency} callers ...", flush=True)
        # Closed loop at each concurrency in turn; the capacity is the best of them (the order
        # path serves more with more in flight: SQLite commits and the outbox relay batch).
        warm_and_capacity = [Phase("warm-up", 2.0, concurrency=args.concurrency[0])] + [
            Phase(f"capacity {n}", args.capacity_seconds, concurrency=n) for n in args.concurrency
        ]
        capacity_meter = CpuMeter(servers.processes)
        measured = await generator.run(
            servers.target,
            warm_and_capacity,
            deadline=10 * deadline,
            processes=args.processes,
            at_phase=capacity_meter,
        )
        rates = {
            n: sum(1 for row in measured.calls.rows(i + 1) if ok(row[3])) / args.capacity_seconds
            for i, n in enumerate(args.concurrency)
        }
        capacity = max(rates.values())
        best = 1 + list(rates.values()).index(capacity)  # the capacity phase's index
        capacity_cpu = sum(capacity_meter.used(best).values()) / args.capacity_seconds
        if capacity <= 0:
            raise SystemExit(f"{target_name} {label}: no call succeeded while measuring capacity")
        # What the capacity phase left queued behind it (the saga's payments and mails) is
        # done before the overload starts, so that the overload does not pay for it.
        await settle(servers.processes)
        speed_at_overload = host_speed.loop_seconds()
        offered = args.factor * capacity
        print(
            f"{target_name} {label}: capacity {capacity:.0f}/s; offering {offered:.0f}/s for "
            f"{args.seconds:g} s, then {capacity / 2:.0f}/s for {args.recovery_seconds:g} s",
            flush=True,
        )
        meter = CpuMeter(servers.processes)
        phases = [
            Phase("overload", args.seconds, rate=offered),
            Phase("recovery", args.recovery_seconds, rate=capacity / 2),
        ]
        run = await generator.run(
            servers.target, phases, deadline=deadline, processes=args.processes, at_phase=meter
        )
    refused = meter.refused(0)
    overload = run.calls.rows(0)
    codes = Counter(code for _, _, _, code, _ in overload)
    # Latency from when the call was sent (its deadline runs from then); how late the generator
    # sent calls is printed apart, as the measurement's validity.
    admitted = sorted(ms - (sent - due) * 1000 for due, sent, ms, code, _ in overload if ok(code))
    shed = sorted(ms - (sent - due) * 1000 for due, sent, ms, code, _ in overload if code in SHED)
    hinted = sum(1 for _, _, _, code, hint in overload if code in SHED and hint)
    lag = sorted((sent - due) * 1000 for due, sent, _, _, _ in overload)
    server_cpu = meter.used(0)
    seconds = args.seconds
    recovered = recovery(run.calls.rows(1), run.bounds[1][0])
    result: dict[str, object] = {
        "target": target_name if target_name == "orders" else f"catalog {args.method}",
        "side": label,
        "deadline_ms": deadline * 1000,
        "capacity": capacity,
        "capacity_by_concurrency": {str(n): round(rate) for n, rate in rates.items()},
        "offered": len(overload) / seconds,
        "goodput": len(admitted) / seconds / capacity,
        "admitted_p50": percentile(admitted, 0.5),
        "admitted_p99": percentile(admitted, 0.99),
        "shed": len(shed),
        "hinted": hinted,
        "shed_p50": percentile(shed, 0.5),
        "shed_p99": percentile(shed, 0.99),
        "expired": sum(n for code, n in codes.items() if code in EXPIRED),
        "client_timeouts": codes.get(CLIENT_TIMEOUT, 0) if target_name == "orders" else 0,
        "unavailable": sum(n for code, n in codes.items() if code in UNAVAILABLE),
        "codes": {code_name(code): n for code, n in codes.most_common()},
        "recovery_s": recovered,
        "server_cpu": sum(server_cpu.values()) / seconds,
        "capacity_server_cpu": capacity_cpu,
        "capacity_generator_cpu": measured.generator_cpu[best] / args.capacity_seconds,
        "capacity_idle": capacity_meter.idle_during(best) / args.capacity_seconds,
        "idle": meter.idle_during(0) / seconds,
        "host_speed": host_speed.line(
            ("before the capacity phase", speed_at_capacity),
            ("before the overload", speed_at_overload),
        ),
        "server_cpu_by_process": {n: round(v / seconds, 2) for n, v in server_cpu.items()},
        "generator_cpu": run.generator_cpu[0] / seconds,
        "generator_us_per_call": run.generator_cpu[0] / max(1, len(overload)) * 1e6,
        "generator_lag_p99": percentile(lag, 0.99),
        "refused": refused,  # during the overload, by server and rule (limit, budget, queue)
    }
    print(report(result), flush=True)
    return result


def report(r: dict[str, object]) -> str:
    def f(key: str, spec: str = ".0f") -> str:
        return format(r[key], spec)

    goodput = float(r["goodput"])  # type: ignore[arg-type]
    p99 = float(r["admitted_p99"])  # type: ignore[arg-type]
    recovered = r["recovery_s"]
    # Goodput per core the servers used, against the capacity phase's: below 1, protection (or
    # the work admitted) cost the servers more per good answer; a shortfall of goodput with this
    # near 1 is cores the servers did not get (the generator, the broker, other work).
    efficiency = goodput * float(r["capacity_server_cpu"]) / max(1e-9, float(r["server_cpu"]))  # type: ignore[arg-type]
    by_process = ", ".join(
        f"{name} {share:.2f}"
        for name, share in sorted(
            r["server_cpu_by_process"].items(),  # type: ignore[attr-defined]
            key=lambda item: -item[1],
        )
    )
    return (
        f"\n{r['target']} {r['side']}: capacity {f('capacity')}/s (closed loop, by callers: "
        + ", ".join(f"{n}: {rate}/s" for n, rate in r["capacity_by_concurrency"].items())  # type: ignore[attr-defined]
        + f"), offered {f('offered')}/s "
        f"({float(r['offered']) / float(r['capacity']):.1f}x), "  # type: ignore[arg-type]
        f"deadline {f('deadline_ms')} ms\n"
        f"  goodput {goodput:.2f} of capacity (target >= 0.80: "
        f"{'met' if goodput >= 0.8 else 'NOT met'})\n"
        f"  admitted p50 {f('admitted_p50')} ms, p99 {f('admitted_p99')} ms "
        f"({'under' if p99 < float(r['deadline_ms']) else 'NOT under'} the deadline)\n"  # type: ignore[arg-type]
        f"  shed {r['shed']} ({r['hinted']} with a retry hint), at the client in "
        f"p50 {f('shed_p50', '.1f')} ms, p99 {f('shed_p99', '.1f')} ms\n"
        f"  DEADLINE_EXCEEDED/504/client timeout {r['expired']}, UNAVAILABLE "
        f"{r['unavailable']}; every outcome: "
        + ", ".join(f"{name} {n}" for name, n in r["codes"].items())  # type: ignore[attr-defined]
        + "\n"
        "  recovery at half capacity: "
        + (f"{recovered:.1f} s" if recovered is not None else "not within the phase")
        + f"\n  CPU (cores): servers {f('server_cpu', '.2f')} ({by_process}); generator "
        f"{f('generator_cpu', '.2f')} ({f('generator_us_per_call')} µs per call), sending "
        f"p99 {f('generator_lag_p99', '.1f')} ms after due; the machine idle {f('idle', '.2f')}\n"
        f"  at capacity (closed loop): servers {f('capacity_server_cpu', '.2f')}, generator "
        f"{f('capacity_generator_cpu', '.2f')}, the machine idle {f('capacity_idle', '.2f')}; "
        f"orders per server core in the overload: {efficiency:.2f} of capacity's\n"
        f"  {r['host_speed']}\n"
        "  refused by the servers, by rule: "
        + (
            "; ".join(
                f"{name} " + ", ".join(f"{rule} {n}" for rule, n in counts.items())
                for name, counts in r["refused"].items()  # type: ignore[attr-defined]
            )
            or "none"
        )
    )


async def run(args: argparse.Namespace) -> None:
    print(
        f"{platform.node()} · {platform.machine()} · {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d %H:%M')} · load average "
        + ", ".join(f"{value:.1f}" for value in os.getloadavg())
        + f" · {args.processes} generator processes",
        flush=True,
    )
    targets = ["orders", "catalog"] if args.target == "both" else [args.target]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for target_name in targets:
            for label in args.sides:
                results.append(
                    await side(label, target_name, label == "protected", args, Path(scratch))
                )
    print("\nsummary · load average now " + ", ".join(f"{value:.1f}" for value in os.getloadavg()))
    for r in results:
        print(report(r))
    if args.json:
        with open(args.json, "w") as out:  # noqa: ASYNC230 — once, after the measurements
            json.dump(results, out, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", choices=("orders", "catalog", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--capacity-seconds", type=float, default=6.0)
    parser.add_argument("--recovery-seconds", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--deadline", type=float, default=0.0, help="s (orders 2, catalog 1)")
    parser.add_argument(
        "--concurrency", default="16,64,256", help="closed-loop callers for the capacity, in turn"
    )
    parser.add_argument("--processes", type=int, default=3, help="generator processes")
    parser.add_argument("--sides", default="protected,unprotected")
    parser.add_argument("--json", help="also write the results to this file")
    # ListProducts (50 a page) costs catalog several times what GetProduct does and the
    # generator the same, so 3x its capacity is within what the generator can offer.
    parser.add_argument("--method", choices=("GetProduct", "ListProducts"), default="GetProduct")
    args = parser.parse_args()
    args.sides = [s.strip() for s in args.sides.split(",")]
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    if not set(args.sides) <= {"protected", "unprotected"} or not args.sides:
        parser.error("--sides: protected and/or unprotected")
    if min(args.seconds, args.capacity_seconds, args.recovery_seconds) <= 0 or args.deadline < 0:
        parser.error("--seconds, --capacity-seconds, --recovery-seconds must be > 0")
    if args.factor <= 0 or min(args.concurrency) < 1 or args.processes < 1:
        parser.error("--factor must be > 0, --concurrency and --processes >= 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
