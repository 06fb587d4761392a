"""Do catalog's writers run in parallel? A latency-bound run: catalog on PostgreSQL behind a TCP
proxy that holds every chunk of bytes for `--delay-ms` in each direction (the database across a
network), so a write transaction spends tens of ms waiting and little on CPU. Staff clients (a
token from a real identity process, verified by catalog) call UpdateProduct (or CreateProduct)
over gRPC back to back, in phases, each on a fresh database with fresh catalog processes:

- 1 client on 1 replica: the single-writer baseline of the run;
- `--clients` clients on 1 replica: writers in parallel inside a process;
- `--clients` clients on each of `--replicas` replicas sharing the database: across replicas;
- hot (UpdateProduct only): every client updates one product, on 1 replica and on
  `--replicas`; its row lock serializes them (they send no etag: each waits its turn on the row
  and applies its fields to the previous result; an ABORTED answer would be counted and retried)
  — the honest contrast.

Each replica serves one WatchProducts stream from revision 0 during its phase; the phase fails if
a watcher sees a revision out of order or twice, or when its writes end has not seen exactly the
change log's revisions (read from the table: one per committed write; on PostgreSQL revisions
are transaction ids, increasing with gaps, so "none skipped" is checked against the table, not
as last + 1). CPU per write is each process's own (catalog's replicas, PostgreSQL's backends,
the proxy, this client; on-CPU time of all threads, /proc) over the measured window; pg_locks is
sampled for the transactions waiting on an advisory lock (the change log's ordered section
before it was removed) or on a row.

    tools/bench catalog_writers [--clients 16] [--replicas 3] [--delay-ms 5] [--seconds 10]
                                [--methods update,create] [--pool-size N]

Each replica runs with CATALOG_DATABASE_POOL_SIZE=`--pool-size` (default: `--clients`, so the
pool is not what caps a replica's clients; the service's default is 10).

Targets (issue 12, acceptance 3): N clients on one replica >= 80% of N x one client's rate (the
analogue of prefetch / latency); `--replicas` replicas >= 2.5x one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import grpc
from google.protobuf import field_mask_pb2
from google.type import money_pb2

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from emporium.catalog.v1 import product_pb2
from emporium.identity.v1 import identity_service_pb2 as identity_pb
from emporium.identity.v1 import identity_service_pb2_grpc as identity_grpc
from libs.runtime.processes import ServiceProcess, start_service
from libs.testing.databases import admin_dsn, fresh_postgres_database
from libs.testing.tcp_proxy import TcpProxy
from tools.identity.accounts import init as init_identity

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CALL_TIMEOUT = 30.0
Metadata = tuple[tuple[str, str], ...]


def cpu_seconds(pid: int) -> float | None:
    """CPU time of a process so far, all its threads, or None when it is gone or not on this
    machine: the scheduler's nanoseconds on a CPU (/proc/<pid>/task/*/schedstat; a PostgreSQL
    backend uses a few ms a window, below the 10 ms ticks of /proc/<pid>/stat), else user +
    system from stat (threads that have exited are counted there, not in schedstat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        tasks = list(Path(f"/proc/{pid}/task").glob("*/schedstat"))
        if tasks:
            return sum(int(task.read_text().split()[0]) for task in tasks) / 1e9
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class Phase:
    label: str
    replicas: int
    clients: int  # per replica
    hot: bool = False


def phases(args: argparse.Namespace, method: str) -> list[Phase]:
    n, r = args.clients, args.replicas
    planned = [
        Phase("1 client, 1 replica (baseline)", 1, 1),
        Phase(f"{n} clients, 1 replica", 1, n),
        Phase(f"{n} clients on each of {r} replicas", r, n),
    ]
    if method == "update":
        planned += [
            Phase(f"hot product: {n} clients, 1 replica", 1, n, hot=True),
            Phase(f"hot product: {n} clients on each of {r} replicas", r, n, hot=True),
        ]
    return planned


@dataclass
class Window:
    """What the writers of one phase did; `counting` is on during the measured window."""

    replicas: int
    counting: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    committed: int = 0  # every OK write, in or out of the window (each is one revision)
    latencies_ms: list[float] = field(default_factory=list)
    by_replica: list[int] = field(default_factory=list)
    aborted: int = 0
    shed: int = 0

    def __post_init__(self) -> None:
        self.by_replica = [0] * self.replicas


@dataclass
class Result:
    phase: Phase
    writes: int
    seconds: float
    latencies_ms: list[float]
    aborted: int
    shed: int
    replica_cpu: list[float | None]
    replica_writes: list[int]
    postgres_cpu: float | None
    proxy_cpu: float | None
    client_cpu: float
    revisions: int
    waiting: tuple[float, float]  # transactions waiting, on average: (change log, a row)

    @property
    def rate(self) -> float:
        return self.writes / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def cpu_ms_per_write(self) -> str:
        """Each replica's CPU per write it served, then every process's per write in all."""

        def per_write(cpu: float | None, writes: int) -> str:
            return "n/a" if cpu is None or not writes else f"{cpu / writes * 1000:.2f}"

        replicas = [
            per_write(cpu, writes)
            for cpu, writes in zip(self.replica_cpu, self.replica_writes, strict=True)
        ]
        known = [cpu for cpu in self.replica_cpu if cpu is not None]
        catalog = per_write(
            sum(known) if len(known) == len(self.replica_cpu) else None, self.writes
        )
        if len(replicas) > 1:
            writes = " / ".join(str(count) for count in self.replica_writes)
            catalog += f" (by replica {' / '.join(replicas)}, writes {writes})"
        others = [
            f"{name} {per_write(cpu, self.writes)}"
            for name, cpu in (
                ("PostgreSQL", self.postgres_cpu),
                ("proxy", self.proxy_cpu),
                ("bench client", self.client_cpu),
            )
        ]
        return f"catalog {catalog} · " + " · ".join(others)


class Watcher:
    """Follows WatchProducts from revision 0; notes every revision not above the last one, and
    keeps them all (compared with the change log at the end: nothing skipped)."""

    def __init__(self, replica: int) -> None:
        self.replica = replica
        self.last = 0
        self.revisions: list[int] = []
        self.problems: list[str] = []
        self._moved = asyncio.Condition()

    @property
    def seen(self) -> int:
        return len(self.revisions)

    async def follow(self, stub: pb_grpc.CatalogServiceAsyncStub, metadata: Metadata) -> None:
        call = stub.WatchProducts(pb.WatchProductsRequest(after_revision=0), metadata=metadata)
        try:
            async for change in call:
                if change.revision <= self.last:
                    self.problems.append(f"out of order: {change.revision} after {self.last}")
                self.last = change.revision
                self.revisions.append(change.revision)
                async with self._moved:
                    self._moved.notify_all()
        except grpc.aio.AioRpcError as error:
            self.problems.append(f"stream ended: {error.code().name} {error.details()}")
        finally:
            call.cancel()

    async def reach(self, revision: int, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within), self._moved:
                await self._moved.wait_for(lambda: self.last >= revision)
        return self.last >= revision


def _money(units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", units=units, nanos=500_000_000)


def create_request(product_id: str) -> pb.CreateProductRequest:
    return pb.CreateProductRequest(
        product_id=product_id,
        request_id=str(uuid.uuid4()),
        product=product_pb2.Product(
            sku=product_id.upper(),
            title=f"Bench mug {product_id}",
            description="A mug to measure writers with.",
            price=_money(12),
            labels={"colour": "blue", "size": "large"},
        ),
    )


def update_request(name: str, step: int) -> pb.UpdateProductRequest:
    return pb.UpdateProductRequest(
        product=product_pb2.Product(name=name, title=f"Bench mug, take {step}", price=_money(step)),
        update_mask=field_mask_pb2.FieldMask(paths=["title", "price"]),
    )


async def write_loop(
    stub: pb_grpc.CatalogServiceAsyncStub,
    replica: int,
    product: str | None,
    tag: str,
    window: Window,
    metadata: Metadata,
) -> None:
    """Writes back to back until the window stops: UpdateProduct on `product`, or with None,
    CreateProduct of new products. ABORTED (a concurrent update won) is counted and retried."""
    step = 0
    while not window.stop.is_set():
        step += 1
        started = time.perf_counter()
        try:
            if product is None:
                await stub.CreateProduct(
                    create_request(f"{tag}-{step}"), metadata=metadata, timeout=CALL_TIMEOUT
                )
            else:
                await stub.UpdateProduct(
                    update_request(product, step), metadata=metadata, timeout=CALL_TIMEOUT
                )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.ABORTED:
                window.aborted += window.counting
                continue
            if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:  # shed: back off a little
                window.shed += window.counting
                await asyncio.sleep(0.01)
                continue
            raise
        window.committed += 1
        if window.counting:
            window.latencies_ms.append((time.perf_counter() - started) * 1000)
            window.by_replica[replica] += 1


@dataclass
class Bench:
    args: argparse.Namespace
    identity: ServiceProcess
    staff_password: str
    proxy_port: int
    proxy_pid: int

    async def staff_metadata(self) -> Metadata:
        async with grpc.aio.insecure_channel(self.identity.address) as channel:
            token = await identity_grpc.IdentityServiceStub(channel).IssueToken(
                identity_pb.IssueTokenRequest(
                    grant_type="password", username="staff", password=self.staff_password
                ),
                timeout=10,
            )
        return (("authorization", f"Bearer {token.access_token}"),)

    def proxied(self, database_url: str) -> str:
        """`database_url` with the proxy in place of the database server."""
        server = urlsplit(database_url).netloc.rsplit("@", 1)[-1]
        return database_url.replace(f"@{server}/", f"@127.0.0.1:{self.proxy_port}/", 1)

    async def start_replica(self, database_url: str) -> ServiceProcess:
        return await start_service(
            "services.catalog",
            {
                "CATALOG_DATABASE_URL": self.proxied(database_url),
                "CATALOG_DATABASE_POOL_SIZE": str(self.args.pool_size),
                "CATALOG_PORT": "0",
                "CATALOG_WORKERS": "1",
                "CATALOG_METRICS_PORT": "0",  # as the fleet runs it
                # Plaintext: this measures the writers, not TLS; tokens are verified.
                "EMPORIUM_SECURITY": "insecure",
                "CATALOG_IDENTITY_TARGET": self.identity.address,
            },
        )

    async def measure(self, phase: Phase, method: str) -> Result:
        args = self.args
        metadata = await self.staff_metadata()
        async with fresh_postgres_database() as database_url:
            database = urlsplit(database_url).path.lstrip("/")
            replicas: list[ServiceProcess] = []
            channels: list[grpc.aio.Channel] = []
            watching: list[asyncio.Task[None]] = []
            writers: list[asyncio.Task[None]] = []
            try:
                for _ in range(phase.replicas):  # one after another: the first one migrates
                    replicas.append(await self.start_replica(database_url))
                channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
                stubs = [pb_grpc.CatalogServiceStub(channel) for channel in channels]
                watchers = [Watcher(index) for index in range(phase.replicas)]
                watching = [
                    asyncio.create_task(w.follow(stubs[w.replica], metadata)) for w in watchers
                ]
                products = await self._products(phase, method, stubs, metadata)
                window = Window(phase.replicas)
                writers = [
                    asyncio.create_task(
                        write_loop(
                            stubs[replica],
                            replica,
                            products[replica][client],
                            f"w{uuid.uuid4().hex[:8]}",
                            window,
                            metadata,
                        )
                    )
                    for replica in range(phase.replicas)
                    for client in range(phase.clients)
                ]
                await asyncio.sleep(args.warmup)  # pools filled, statements prepared
                pids = [r.process.pid for r in replicas]
                postgres_before = await _backend_cpu(database)
                replica_before = [cpu_seconds(pid) for pid in pids]
                proxy_before = cpu_seconds(self.proxy_pid)
                client_before = time.process_time()
                window.counting = True
                started = time.perf_counter()
                waiting = await _lock_waits(database, args.seconds)
                window.counting = False
                elapsed = time.perf_counter() - started
                client_cpu = time.process_time() - client_before
                replica_after = [cpu_seconds(pid) for pid in pids]
                proxy_after = cpu_seconds(self.proxy_pid)
                postgres_after = await _backend_cpu(database)
                window.stop.set()
                await asyncio.gather(*writers)
                created = len({p for row in products for p in row if p is not None})
                revisions = created + window.committed
                await self._check_feed(watchers, revisions, database)
            finally:
                for task in (*writers, *watching):
                    task.cancel()
                for channel in channels:
                    await channel.close(grace=None)
                for replica in replicas:
                    await replica.terminate()
        return Result(
            phase=phase,
            writes=sum(window.by_replica),
            seconds=elapsed,
            latencies_ms=window.latencies_ms,
            aborted=window.aborted,
            shed=window.shed,
            replica_cpu=[_delta(b, a) for b, a in zip(replica_before, replica_after, strict=True)],
            replica_writes=window.by_replica,
            postgres_cpu=_postgres_delta(postgres_before, postgres_after),
            proxy_cpu=_delta(proxy_before, proxy_after),
            client_cpu=client_cpu,
            revisions=revisions,
            waiting=waiting,
        )

    async def _products(
        self,
        phase: Phase,
        method: str,
        stubs: Sequence[pb_grpc.CatalogServiceAsyncStub],
        metadata: Metadata,
    ) -> list[list[str | None]]:
        """What each client writes: its own product, the one hot product, or None (creates)."""
        if method == "create":
            return [[None] * phase.clients for _ in stubs]

        async def create(replica: int, product_id: str) -> str:
            made = await stubs[replica].CreateProduct(
                create_request(product_id), metadata=metadata, timeout=CALL_TIMEOUT
            )
            return made.name

        if phase.hot:
            hot = await create(0, "hot")
            return [[hot] * phase.clients for _ in stubs]
        return [
            list(
                await asyncio.gather(
                    *(create(replica, f"p{replica}-{client}") for client in range(phase.clients))
                )
            )
            for replica in range(len(stubs))
        ]

    async def _check_feed(self, watchers: list[Watcher], revisions: int, database: str) -> None:
        """The change log holds one revision per committed write, and every watcher saw exactly
        those, in order, each once."""
        connection = await asyncpg.connect(admin_dsn().rsplit("/", 1)[0] + f"/{database}")
        try:
            log = [
                row[0]
                for row in await connection.fetch(
                    "SELECT revision FROM product_changes ORDER BY revision"
                )
            ]
        finally:
            await connection.close()
        last = log[-1] if log else 0
        reached = await asyncio.gather(
            *(w.reach(last, within=max(10.0, self.args.seconds)) for w in watchers)
        )
        problems = [
            f"replica {w.replica}'s watcher: {problem}" for w in watchers for problem in w.problems
        ]
        problems += [
            f"replica {w.replica}'s watcher stopped at {w.last} of {last}"
            for w, ok in zip(watchers, reached, strict=True)
            if not ok
        ]
        for w in watchers:
            missed = sorted(set(log) - set(w.revisions))
            if missed:
                problems.append(
                    f"replica {w.replica}'s watcher skipped {len(missed)}: {missed[:5]} ..."
                )
        if len(log) != revisions:
            problems.append(f"the change log has {len(log)} changes, not {revisions}")
        if problems:
            raise SystemExit("change feed check failed:\n  " + "\n  ".join(problems))
        seen = sum(w.seen for w in watchers)
        print(
            f"    watchers: {len(watchers)} x {revisions} revisions, in order, none skipped "
            f"({seen} changes checked; revisions {log[0]}..{last})",
            flush=True,
        )


async def _lock_waits(database: str, seconds: float) -> tuple[float, float]:
    """Samples pg_locks every 0.1 s for `seconds`: how many of `database`'s transactions wait,
    on average, for an advisory lock (the change log's ordered section) and for a row (another
    transaction's row lock)."""
    connection = await asyncpg.connect(admin_dsn())
    samples: list[tuple[int, int]] = []
    try:
        oid = await connection.fetchval("SELECT oid FROM pg_database WHERE datname = $1", database)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            row = await connection.fetchrow(
                "SELECT count(*) FILTER (WHERE locktype = 'advisory' AND database = $1),"
                " count(*) FILTER (WHERE locktype IN ('transactionid', 'tuple')) FROM pg_locks"
                " WHERE NOT granted AND pid IN"
                " (SELECT pid FROM pg_stat_activity WHERE datid = $1)",
                oid,
            )
            assert row is not None
            samples.append((row[0], row[1]))
            await asyncio.sleep(max(0.0, min(0.1, deadline - time.perf_counter())))
    finally:
        await connection.close()
    if not samples:
        return 0.0, 0.0
    return (
        statistics.fmean(a for a, _ in samples),
        statistics.fmean(b for _, b in samples),
    )


async def _backend_cpu(database: str) -> dict[int, float | None]:
    """CPU so far of each PostgreSQL backend connected to `database` (None: not readable)."""
    connection = await asyncpg.connect(admin_dsn())
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", database
        )
    finally:
        await connection.close()
    return {row["pid"]: cpu_seconds(row["pid"]) for row in rows}


def _postgres_delta(
    before: dict[int, float | None], after: dict[int, float | None]
) -> float | None:
    """The backends' CPU over the window: a backend born during it counts from zero."""
    if any(cpu is None for cpu in after.values()):
        return None  # PostgreSQL is not on this machine (or not readable)
    return sum(cpu - (before.get(pid) or 0.0) for pid, cpu in after.items() if cpu is not None)


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


async def start_proxy(delay: float) -> tuple[asyncio.subprocess.Process, int]:
    """The delaying proxy to PostgreSQL, in its own process (its CPU is the network's)."""
    target = urlsplit(admin_dsn())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.catalog_writers",
        "--serve-proxy",
        f"{target.hostname or '127.0.0.1'}:{target.port or 5432}",
        "--delay-ms",
        str(delay * 1000),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    if not line.strip().isdigit():
        process.kill()
        raise SystemExit(f"the proxy did not start: {line!r}")
    return process, int(line)


async def serve_proxy(target: str, delay: float) -> None:
    host, _, port = target.rpartition(":")
    proxy = TcpProxy(host, int(port), delay=delay)
    print(await proxy.start(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await proxy.cut()


async def round_trip_ms(dsn: str) -> float:
    """The median of 20 `SELECT 1` round trips on one connection."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.fetchval("SELECT 1")
        times = []
        for _ in range(20):
            started = time.perf_counter()
            await connection.fetchval("SELECT 1")
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        await connection.close()


async def start_identity(scratch: Path) -> tuple[ServiceProcess, str]:
    accounts = scratch / "identity"
    init_identity(accounts)
    identity = await start_service(
        "services.identity",
        {
            "IDENTITY_DATABASE_URL": f"sqlite+aiosqlite:///{scratch / 'identity.sqlite3'}",
            "IDENTITY_KEYS_DIR": str(accounts / "keys"),
            "IDENTITY_CLIENTS_FILE": str(accounts / "clients.json"),
            "IDENTITY_USERS_FILE": str(accounts / "users.json"),
            "IDENTITY_PORT": "0",
            "EMPORIUM_SECURITY": "insecure",
        },
    )
    return identity, (accounts / "secrets" / "staff").read_text().strip()


def report(
    method: str, results: list[Result], args: argparse.Namespace, round_trip_ms: float
) -> None:
    """Rates and ratios; `1/rate` in round trips through the proxy says how much of a write's
    waiting is serialized (for one client, a whole write's round trips)."""
    base, inside, across = results[0], results[1], results[2]
    n, r = args.clients, args.replicas
    rpc = "UpdateProduct" if method == "update" else "CreateProduct"
    print(f"\n{rpc}: writes/s and ratios to the single writer of this run ({base.rate:.1f}/s)")
    for result in results:
        extra = f", {result.aborted} ABORTED and retried" if result.aborted else ""
        extra += f", {result.shed} shed" if result.shed else ""
        interval = 1000 / result.rate if result.rate else float("inf")
        print(
            f"  {result.phase.label:<48} {result.rate:6.1f}/s  {result.rate / base.rate:5.2f}x  "
            f"p50 {result.percentile(0.5):6.1f} ms  p99 {result.percentile(0.99):6.1f} ms  "
            f"1/rate {interval:5.1f} ms = {interval / round_trip_ms:4.1f} round trips{extra}"
        )
        print(f"    CPU ms per write: {result.cpu_ms_per_write()}")
        print(
            f"    transactions waiting, on average: {result.waiting[0]:.1f} for an advisory lock "
            f"(the old change log's ordered section), {result.waiting[1]:.1f} for a row lock"
        )
    parallel = inside.rate / (n * base.rate)
    scale = across.rate / inside.rate
    print(
        f"  {n} clients on 1 replica / ({n} x 1 client): {parallel:.2f} (target >= 0.8: "
        f"{'met' if parallel >= 0.8 else 'NOT met'}; a replica's pool holds {args.pool_size} "
        "connections)"
    )
    print(
        f"  {r} replicas / 1 replica, {n} clients each: {scale:.2f}x (target >= 2.5: "
        f"{'met' if scale >= 2.5 else 'NOT met'})"
    )


async def run(args: argparse.Namespace) -> None:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"{platform.node()} · {platform.machine()} · {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d %H:%M')} · load average {load} · PostgreSQL behind a proxy "
        f"adding {args.delay_ms:g} ms each way · {args.seconds:g} s windows after "
        f"{args.warmup:g} s warm-up · CATALOG_DATABASE_POOL_SIZE={args.pool_size}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        identity, password = await start_identity(Path(scratch))
        proxy, proxy_port = await start_proxy(args.delay_ms / 1000)
        try:
            bench = Bench(args, identity, password, proxy_port, proxy.pid)
            dsn = admin_dsn()
            direct = await round_trip_ms(dsn)
            delayed = await round_trip_ms(bench.proxied(dsn))
            print(
                f"SELECT 1 round trip: {direct:.2f} ms direct, {delayed:.2f} ms through the proxy"
            )
            for method in args.methods:
                results = []
                for phase in phases(args, method):
                    print(f"{method}: {phase.label} ...", flush=True)
                    result = await bench.measure(phase, method)
                    print(
                        f"    {result.writes} writes in {result.seconds:.1f} s = "
                        f"{result.rate:.1f}/s",
                        flush=True,
                    )
                    results.append(result)
                report(method, results, args, delayed)
        finally:
            proxy.send_signal(signal.SIGTERM)
            await proxy.wait()
            await identity.terminate()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')} · load average at the end {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients per replica")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=5.0, help="added each way, ms")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    parser.add_argument("--methods", default="update,create", help="update, create or both")
    parser.add_argument(
        "--pool-size",
        type=int,
        help="CATALOG_DATABASE_POOL_SIZE of each replica (default: --clients)",
    )
    parser.add_argument("--serve-proxy", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        asyncio.run(serve_proxy(args.serve_proxy, args.delay_ms / 1000))
        return
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    if not args.methods or not set(args.methods) <= {"update", "create"}:
        parser.error("--methods: update, create or both")
    if args.clients < 2 or args.replicas < 2 or args.delay_ms < 0 or args.seconds <= 0:
        parser.error("--clients and --replicas must be >= 2, --delay-ms >= 0, --seconds > 0")
    args.pool_size = args.pool_size or args.clients
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
