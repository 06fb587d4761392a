"""Do payments' writers run in parallel? A latency-bound run: payments on PostgreSQL with the
simulated provider taking `--latency` s per call, each replica handling `--prefetch` charges at
once, 1 replica then `--replicas` replicas on one database and one work queue. Once every
worker consumes, a backlog of AuthorizePayment commands is published, and the time from the
first payment opened to the last one AUTHORIZED is read from the payments table; the workers'
CPU per payment (/proc) is printed with it. With no lock serializing writers, one replica
reaches close to prefetch ÷ latency and N replicas N times that, as long as the cores keep up.

    tools/bench payments_replicas [--replicas 3] [--latency 0.2] [--prefetch 16] [--seconds 6]

Targets (issue 12): N replicas >= 2.5x one; one replica >= 80% of prefetch / latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from google.type import money_pb2
from sqlalchemy.engine import make_url

from emporium.payments.v1 import payment_messages_pb2 as messages
from libs.messaging.broker import BrokerOptions
from libs.messaging.contract import fleet_contract
from libs.messaging.envelope import command
from libs.messaging.publisher import Publisher
from libs.messaging.topology import Topology
from libs.runtime.processes import ServiceProcess, start_service
from libs.testing.broker import fresh_vhost
from libs.testing.databases import fresh_postgres_database
from services.payments.domain.model import PaymentState

CHARGE_QUEUE = fleet_contract().topology("payments").work_queues[0].name
AMOUNT = money_pb2.Money(currency_code="EUR", units=12, nanos=0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Measured:
    rate: float  # payments authorized per second
    cpu_ms: float  # the workers' CPU per payment (all replicas)


async def measure(replicas: int, args: argparse.Namespace) -> Measured:
    """Payments authorized per second by `replicas` workers on a fresh database and vhost.

    The workers are started and consuming before the backlog is published (concurrently, so
    the publisher is never what they wait for); the rate is timed by the payments table
    itself, from the first payment opened to the last one authorized."""
    count = int(replicas * args.prefetch / args.latency * args.seconds)
    async with fresh_vhost() as amqp_url, fresh_postgres_database() as database_url:
        with tempfile.TemporaryDirectory() as scratch:
            env = {
                "PAYMENTS_DATABASE_URL": database_url,
                "EMPORIUM_AMQP_URL": amqp_url,
                "PAYMENTS_PORT": "0",
                "PAYMENTS_SECURITY": "insecure",
                "PAYMENTS_PREFETCH": str(args.prefetch),
                "PAYMENTS_CONCURRENCY": str(args.prefetch),
                "PAYMENTS_PROVIDER_LATENCY_SECONDS": str(args.latency),
                "PAYMENTS_PROVIDER_LEDGER": str(Path(scratch) / "ledger.sqlite3"),
                "PAYMENTS_CHECK_ORDERS": "false",  # the workers alone: every order is payable
                "PAYMENTS_REGISTRY_FILE": str(Path(scratch) / "registry.json"),
            }
            dsn = make_url(database_url).set(drivername="postgresql")
            workers: list[ServiceProcess] = []
            try:
                for _ in range(replicas):
                    workers.append(await start_service("services.payments", env))
                for worker in workers:
                    await worker.wait_for_log("consuming")
                database = await asyncpg.connect(dsn.render_as_string(hide_password=False))
                publisher = Publisher(BrokerOptions(amqp_url), Topology())
                await publisher.start()
                cpu_before = sum(cpu_seconds(w.process.pid) for w in workers)
                try:
                    bodies = [
                        messages.AuthorizePayment(
                            order=f"orders/{uuid.uuid4().hex}",
                            customer="customers/bench",
                            amount=AMOUNT,
                            payment_method="cards/visa",
                        )
                        for _ in range(count)
                    ]
                    for start in range(0, count, 64):
                        await asyncio.gather(
                            *(
                                publisher.publish(command(CHARGE_QUEUE, body))
                                for body in bodies[start : start + 64]
                            )
                        )
                finally:
                    await publisher.close()
                try:
                    deadline = time.monotonic() + args.seconds * 10 + 60
                    while (done := await _authorized(database)) < count:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"{replicas} replica(s): {done} of {count} authorized")
                        await asyncio.sleep(0.2)  # polls the database, not a worker
                    cpu = sum(cpu_seconds(w.process.pid) for w in workers) - cpu_before
                    span = await database.fetchrow(
                        "SELECT min(create_us), max(update_us) FROM payments"
                    )
                    assert span is not None
                    first, last = int(span[0]), int(span[1])
                finally:
                    await database.close()
            finally:
                for worker in workers:
                    await worker.terminate()
    elapsed = (last - first) / 1e6
    measured = Measured(count / elapsed, cpu * 1000 / count)
    print(
        f"{replicas} replica(s): {count} payments in {elapsed:.2f} s = {measured.rate:.1f}/s;"
        f" workers' CPU {measured.cpu_ms:.2f} ms per payment",
        flush=True,
    )
    return measured


async def _authorized(database: asyncpg.Connection) -> int:
    query = "SELECT count(*) FROM payments WHERE state = $1"
    return int(await database.fetchval(query, PaymentState.AUTHORIZED.value) or 0)


async def run(args: argparse.Namespace) -> None:
    one_measured = await measure(1, args)
    many_measured = await measure(args.replicas, args)
    one, many = one_measured.rate, many_measured.rate
    ideal = args.prefetch / args.latency
    print(
        f"\n{platform.node()} · {platform.machine()} · {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d %H:%M')} · PostgreSQL · latency {args.latency:g} s · "
        f"prefetch {args.prefetch} · load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"workers' CPU per payment: {one_measured.cpu_ms:.2f} ms (1 replica),"
        f" {many_measured.cpu_ms:.2f} ms ({args.replicas} replicas)"
    )
    print(
        f"{args.replicas} replicas / 1: {many / one:.2f}x (target >= 2.5: "
        f"{'met' if many / one >= 2.5 else 'NOT met'})"
    )
    print(
        f"1 replica / (prefetch / latency = {ideal:.0f}/s): {one / ideal:.2f} (target >= 0.8: "
        f"{'met' if one / ideal >= 0.8 else 'NOT met'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.2, help="provider latency, s")
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0, help="backlog size, in seconds")
    args = parser.parse_args()
    if args.replicas < 2 or args.prefetch < 1 or args.latency <= 0 or args.seconds <= 0:
        parser.error("--replicas must be at least 2, --prefetch 1, --latency and --seconds > 0")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
