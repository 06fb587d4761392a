"""SQLite writes beside a busy event loop, by the interpreter's GIL switch interval.

A service's SQLite writes run on the database's own thread (libs/storage/transaction.py), and
the `sqlite3` module lets go of the GIL around each statement. Taking it back waits until the
thread holding it lets go, which a thread running Python does only every *switch interval*
(`sys.setswitchinterval`, 5 ms by default): while the event loop is busy, each statement of a
write can wait up to 5 ms for the loop, and a write transaction of four statements 20 ms, where
it takes 0.3 ms alone. The writes then queue behind one another, and the requests waiting on
them hold their deadlines; the CPU is not the limit, the hand-over is.

This bench keeps a uvloop loop busy with request-like tasks (`--busy` of them, each running
Python for `--work-us` µs and then sleeping, paced to keep the loop `--load` busy), while writes
arrive at `--rate` a second, each a task writing through `Database.transaction` (read a row,
update it, insert an event: BEGIN IMMEDIATE … COMMIT). Each interval policy in turn (the rounds
interleave them, so that the machine's drift falls on all alike): CPython's 5 ms throughout,
0.2 ms throughout (the services until 2026-12-02), and 0.2 ms only while the database's thread
has work (`QuickHandover`, the kit's). It prints the writes' latency (p50, p99), the writes and
the loop's work done per second (equal when both keep up), and the process's CPU per write (the
loop's work included, so equal work costs the same), with ratios against 5 ms in the same run.

    tools/bench gil_handoff [--seconds 3] [--rounds 3] [--rate 300] [--busy 8] [--work-us 300]
                            [--load 0.7]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import uvloop

from bench import host_speed
from libs.storage.database import Database
from libs.storage.transaction import QUICK_HANDOVER, Transaction

DEFAULT = 0.005  # CPython's
QUICK = QUICK_HANDOVER.INTERVAL
ITEMS = 64


class Policy(NamedTuple):
    name: str
    interval: float  # the process's switch interval while the round runs
    handover: float  # the interval QuickHandover sets while the thread has work


POLICIES = (
    Policy("5 ms", DEFAULT, DEFAULT),
    Policy("0.2 ms", QUICK, QUICK),
    Policy("0.2 ms with work", DEFAULT, QUICK),
)
KIT = POLICIES[-1]
MARK = "  <- the kit's (libs/storage/transaction.py)"


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    loop_work: int = 0
    cpu: float = 0.0


async def write(tx: Transaction, item: int) -> None:
    row = await tx.fetchrow("SELECT quantity, version FROM items WHERE id = $1", item)
    assert row is not None
    await tx.execute(
        "UPDATE items SET quantity = $1, version = version + 1 WHERE id = $2 AND version = $3",
        row[0] + 1,
        item,
        row[1],
    )
    await tx.execute("INSERT INTO events (item, delta) VALUES ($1, 1)", item)


async def measure(db: Database, policy: Policy, args: argparse.Namespace, per_us: float) -> Sample:
    sys.setswitchinterval(policy.interval)
    QUICK_HANDOVER.INTERVAL = policy.handover
    sample = Sample()
    loop = asyncio.get_running_loop()
    work_iterations = max(1, int(args.work_us * per_us))
    # Each task: work, then a pause, so that `busy` of them keep the loop `load` busy.
    pause = args.work_us / 1e6 * (args.busy / args.load - 1)
    end = loop.time() + args.seconds

    async def busy() -> None:
        while loop.time() < end:
            total = 0
            for i in range(work_iterations):
                total += i
            sample.loop_work += 1
            await asyncio.sleep(pause)

    async def one_write(number: int, due: float) -> None:
        await db.transaction(lambda tx: write(tx, number % ITEMS))
        sample.latencies.append(time.perf_counter() - due)

    async def arrivals() -> None:
        writes: list[asyncio.Task[None]] = []
        due = time.perf_counter()  # (loop.time() counts whole milliseconds on uvloop)
        while loop.time() < end:
            writes.append(asyncio.create_task(one_write(len(writes), due)))
            due += 1 / args.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await asyncio.gather(*writes)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(arrivals(), *(busy() for _ in range(args.busy)))
    sample.seconds = time.perf_counter() - wall
    sample.cpu = time.process_time() - cpu
    sys.setswitchinterval(DEFAULT)
    QUICK_HANDOVER.INTERVAL = QUICK
    return sample


async def run(args: argparse.Namespace) -> None:
    # Loop iterations of `total += i` per µs here, so that a task's step takes --work-us.
    per_us = 2_000_000 / (host_speed.loop_seconds(2_000_000) * 1e6)
    with tempfile.TemporaryDirectory() as scratch:
        db = Database(f"sqlite+aiosqlite:///{Path(scratch) / 'bench.db'}")

        async def schema(tx: Transaction) -> None:
            await tx.execute(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, quantity INTEGER, version INTEGER)"
            )
            await tx.execute(
                "CREATE TABLE events (id INTEGER PRIMARY KEY, item INTEGER, delta INTEGER)"
            )
            for item in range(ITEMS):
                await tx.execute("INSERT INTO items VALUES ($1, 0, 0)", item)

        await db.transaction(schema)
        samples: dict[Policy, list[Sample]] = {policy: [] for policy in POLICIES}
        for round_number in range(args.rounds):
            print(f"round {round_number + 1}/{args.rounds} ...", flush=True)
            for policy in POLICIES:
                samples[policy].append(await measure(db, policy, args, per_us))
        await db.dispose()
    print(
        f"\n{platform.node()} · {platform.machine()} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{args.rate:g} writes/s beside {args.busy} tasks of {args.work_us} µs keeping the loop "
        f"{args.load:.0%} busy, "
        f"{args.rounds} rounds of {args.seconds:g} s per interval policy"
    )
    print(
        f"{'switch interval':>16} {'write p50':>10} {'write p99':>10} {'writes/s':>9} "
        f"{'vs 5 ms':>8} {'loop work/s':>12} {'vs 5 ms':>8} {'CPU µs/write':>13} {'vs 5 ms':>8}"
    )
    baseline = summary(samples[POLICIES[0]])
    for policy in POLICIES:
        p50, p99, rate, work, cpu = summary(samples[policy])
        print(
            f"{policy.name:>16} {p50 * 1000:>8.2f}ms {p99 * 1000:>8.2f}ms {rate:>9.0f} "
            f"{rate / baseline[2]:>7.1f}x {work:>12.0f} {work / baseline[3]:>7.2f}x "
            f"{cpu * 1e6:>13.0f} {cpu / baseline[4]:>7.2f}x{MARK if policy == KIT else ''}"
        )


def summary(samples: list[Sample]) -> tuple[float, float, float, float, float]:
    """p50 and p99 write latency over every round; writes/s, loop work/s and CPU per write:
    the median round's."""
    latencies = sorted(x for s in samples for x in s.latencies)
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    rate = statistics.median(len(s.latencies) / s.seconds for s in samples)
    work = statistics.median(s.loop_work / s.seconds for s in samples)
    cpu = statistics.median(s.cpu / max(1, len(s.latencies)) for s in samples)
    return p50, p99, rate, work, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=300.0, help="writes per second")
    parser.add_argument("--load", type=float, default=0.7, help="the loop's busy share")
    parser.add_argument("--busy", type=int, default=8, help="request-like tasks on the loop")
    parser.add_argument("--work-us", type=int, default=300, help="µs of Python per task step")
    args = parser.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
