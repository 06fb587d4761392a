"""The data layer's own cost: one 5-statement write transaction and one keyed read, through each
candidate client path, on SQLite and on PostgreSQL, in one run.

Candidates:
  sqlalchemy-async   today's path: SQLAlchemy Core async (aiosqlite / asyncpg), one
                     `engine.begin()` per transaction, `await connection.execute(...)` per statement
  sqlite3-thread     the standard sqlite3 module on one dedicated thread per database; the whole
                     transaction function is handed to that thread at once (BEGIN IMMEDIATE)
  asyncpg            asyncpg directly: a pool, `connection.transaction()`, prepared statements
                     (asyncpg's statement cache)
  sqlalchemy-sync    the same Core statements run synchronously inside one hop per transaction:
                     a pysqlite engine on a worker thread (SQLite); `AsyncConnection.run_sync`,
                     one greenlet switch into asyncpg per statement (PostgreSQL)
  kit                what the services use: `Database.transaction` (libs/storage), the chosen
                     path with its dialect seam, statement counting, cancellation and (SQLite)
                     reads on the loop while short

The write transaction is the shape of a repository's: read a row, update it under its version,
insert an event, insert an outbox row, update a counter. CPU is this process's (all threads:
time.process_time); the PostgreSQL server's CPU is not included. Ratios are against today's path
in the same run.

    tools/bench data_layer [--transactions 2000] [--concurrency 8] [--postgres DSN | --no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from libs.storage.database import Database
from libs.storage.transaction import Transaction
from libs.testing.databases import admin_dsn

T = TypeVar("T")
ITEMS = 64

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("item", sa.Text, nullable=False),
    sa.Column("delta", sa.Integer, nullable=False),
)
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
)
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)


@dataclass
class Figures:
    name: str
    write_cpu_ms: float
    write_per_s: float
    read_cpu_ms: float
    read_per_s: float


class Candidate:
    """One client path: `write(i)` runs the 5-statement transaction, `read(i)` one keyed read."""

    name = ""

    async def open(self) -> None: ...

    async def write(self, i: int) -> None:
        raise NotImplementedError

    async def read(self, i: int) -> None:
        raise NotImplementedError

    async def close(self) -> None: ...


def _sqlite_connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


# -- (a) today's path ---------------------------------------------------------------------------


class SqlAlchemyAsync(Candidate):
    name = "sqlalchemy-async"

    def __init__(self, url: str) -> None:
        self.engine = (
            create_async_engine(url, pool_size=10)
            if "asyncpg" in url
            else (create_async_engine(url, connect_args={"timeout": 30}))
        )

    async def write(self, i: int) -> None:
        key = f"item-{i % ITEMS}"
        async with self.engine.begin() as connection:
            row = (
                await connection.execute(
                    sa.select(items.c.quantity, items.c.version).where(items.c.id == key)
                )
            ).one()
            await connection.execute(
                items.update()
                .where(items.c.id == key, items.c.version == row.version)
                .values(quantity=row.quantity + 1, version=row.version + 1)
            )
            await connection.execute(events.insert().values(id=uuid.uuid4().hex, item=key, delta=1))
            await connection.execute(outbox.insert().values(id=uuid.uuid4().hex, body=key))
            await connection.execute(
                counters.update()
                .where(counters.c.name == "writes")
                .values(value=counters.c.value + 1)
            )

    async def read(self, i: int) -> None:
        async with self.engine.connect() as connection:
            (
                await connection.execute(
                    sa.select(items.c.quantity, items.c.version).where(
                        items.c.id == f"item-{i % ITEMS}"
                    )
                )
            ).one()

    async def close(self) -> None:
        await self.engine.dispose()


# -- (b) sqlite3 on a dedicated thread -----------------------------------------------------------


def _sqlite_write(connection: sqlite3.Connection, i: int) -> None:
    key = f"item-{i % ITEMS}"
    connection.execute("BEGIN IMMEDIATE")
    try:
        quantity, version = connection.execute(
            "SELECT quantity, version FROM items WHERE id = ?", (key,)
        ).fetchone()
        connection.execute(
            "UPDATE items SET quantity = ?, version = ? WHERE id = ? AND version = ?",
            (quantity + 1, version + 1, key, version),
        )
        connection.execute(
            "INSERT INTO events (id, item, delta) VALUES (?, ?, ?)", (uuid.uuid4().hex, key, 1)
        )
        connection.execute("INSERT INTO outbox (id, body) VALUES (?, ?)", (uuid.uuid4().hex, key))
        connection.execute("UPDATE counters SET value = value + 1 WHERE name = ?", ("writes",))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


class SqliteThread(Candidate):
    """A writer thread and a reader thread, each owning its connection."""

    name = "sqlite3-thread"

    def __init__(self, path: str) -> None:
        self.path = path
        self.writer = ThreadPoolExecutor(1, "sqlite-writer")
        self.reader = ThreadPoolExecutor(1, "sqlite-reader")

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.write_connection = await loop.run_in_executor(self.writer, _sqlite_connect, self.path)
        self.read_connection = await loop.run_in_executor(self.reader, _sqlite_connect, self.path)

    async def write(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.writer, _sqlite_write, self.write_connection, i)

    async def read(self, i: int) -> None:
        def run() -> None:
            self.read_connection.execute(
                "SELECT quantity, version FROM items WHERE id = ?", (f"item-{i % ITEMS}",)
            ).fetchone()

        await asyncio.get_running_loop().run_in_executor(self.reader, run)

    async def close(self) -> None:
        self.writer.submit(self.write_connection.close).result()
        self.reader.submit(self.read_connection.close).result()
        self.writer.shutdown()
        self.reader.shutdown()


# -- (c) asyncpg directly ------------------------------------------------------------------------


class AsyncpgDirect(Candidate):
    name = "asyncpg"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def open(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=2, max_size=10)

    async def write(self, i: int) -> None:
        key = f"item-{i % ITEMS}"
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT quantity, version FROM items WHERE id = $1", key
            )
            assert row is not None
            await connection.execute(
                "UPDATE items SET quantity = $1, version = $2 WHERE id = $3 AND version = $4",
                row["quantity"] + 1,
                row["version"] + 1,
                key,
                row["version"],
            )
            await connection.execute(
                "INSERT INTO events (id, item, delta) VALUES ($1, $2, $3)", uuid.uuid4().hex, key, 1
            )
            await connection.execute(
                "INSERT INTO outbox (id, body) VALUES ($1, $2)", uuid.uuid4().hex, key
            )
            await connection.execute(
                "UPDATE counters SET value = value + 1 WHERE name = $1", "writes"
            )

    async def read(self, i: int) -> None:
        async with self.pool.acquire() as connection:
            await connection.fetchrow(
                "SELECT quantity, version FROM items WHERE id = $1", f"item-{i % ITEMS}"
            )

    async def close(self) -> None:
        await self.pool.close()


# -- (d) SQLAlchemy Core synchronously, one hop per transaction ---------------------------------


def _core_write(connection: sa.Connection, i: int) -> None:
    key = f"item-{i % ITEMS}"
    row = connection.execute(
        sa.select(items.c.quantity, items.c.version).where(items.c.id == key)
    ).one()
    connection.execute(
        items.update()
        .where(items.c.id == key, items.c.version == row.version)
        .values(quantity=row.quantity + 1, version=row.version + 1)
    )
    connection.execute(events.insert().values(id=uuid.uuid4().hex, item=key, delta=1))
    connection.execute(outbox.insert().values(id=uuid.uuid4().hex, body=key))
    connection.execute(
        counters.update().where(counters.c.name == "writes").values(value=counters.c.value + 1)
    )


def _core_read(connection: sa.Connection, i: int) -> None:
    connection.execute(
        sa.select(items.c.quantity, items.c.version).where(items.c.id == f"item-{i % ITEMS}")
    ).one()


class SqlAlchemySyncSqlite(Candidate):
    """A pysqlite engine used on one writer thread and one reader thread."""

    name = "sqlalchemy-sync"

    def __init__(self, path: str) -> None:
        self.engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
        sa.event.listen(self.engine, "connect", _autocommit_off)
        sa.event.listen(self.engine, "begin", _begin_immediate)
        self.writer = ThreadPoolExecutor(1, "sa-writer")
        self.reader = ThreadPoolExecutor(1, "sa-reader")

    async def write(self, i: int) -> None:
        def run() -> None:
            with self.engine.begin() as connection:
                _core_write(connection, i)

        await asyncio.get_running_loop().run_in_executor(self.writer, run)

    async def read(self, i: int) -> None:
        def run() -> None:
            with self.engine.connect() as connection:
                _core_read(connection, i)

        await asyncio.get_running_loop().run_in_executor(self.reader, run)

    async def close(self) -> None:
        self.writer.shutdown()
        self.reader.shutdown()
        self.engine.dispose()


def _autocommit_off(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.isolation_level = None  # the "begin" event below issues BEGIN itself


def _begin_immediate(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class SqlAlchemyRunSyncPostgres(Candidate):
    name = "sqlalchemy-sync"

    def __init__(self, url: str) -> None:
        self.engine = create_async_engine(url, pool_size=10)

    async def write(self, i: int) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(_core_write, i)

    async def read(self, i: int) -> None:
        async with self.engine.connect() as connection:
            await connection.run_sync(_core_read, i)

    async def close(self) -> None:
        await self.engine.dispose()


# -- (e) the kit, as the services use it ---------------------------------------------------------


class KitDatabase(Candidate):
    name = "kit"

    def __init__(self, url: str) -> None:
        self.database = Database(url)

    async def write(self, i: int) -> None:
        key = f"item-{i % ITEMS}"

        async def write(tx: Transaction) -> None:
            row = await tx.fetchrow("SELECT quantity, version FROM items WHERE id = $1", key)
            assert row is not None
            await tx.execute(
                "UPDATE items SET quantity = $1, version = $2 WHERE id = $3 AND version = $4",
                row[0] + 1,
                row[1] + 1,
                key,
                row[1],
            )
            await tx.execute(
                "INSERT INTO events (id, item, delta) VALUES ($1, $2, $3)", uuid.uuid4().hex, key, 1
            )
            await tx.execute("INSERT INTO outbox (id, body) VALUES ($1, $2)", uuid.uuid4().hex, key)
            await tx.execute("UPDATE counters SET value = value + 1 WHERE name = $1", "writes")

        await self.database.transaction(write)

    async def read(self, i: int) -> None:
        async def read(tx: Transaction) -> None:
            await tx.fetchrow(
                "SELECT quantity, version FROM items WHERE id = $1", f"item-{i % ITEMS}"
            )

        await self.database.transaction(read, write=False)

    async def close(self) -> None:
        await self.database.dispose()


# -- the run -------------------------------------------------------------------------------------


async def _create_schema(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)
        await connection.execute(
            items.insert(), [{"id": f"item-{n}", "quantity": 0, "version": 0} for n in range(ITEMS)]
        )
        await connection.execute(counters.insert().values(name="writes", value=0))
    await engine.dispose()


async def _drive(operation: Callable[[int], Awaitable[None]], count: int, concurrency: int) -> None:
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            await operation(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _measure(candidate: Candidate, url: str, count: int, concurrency: int) -> Figures:
    await _create_schema(url)
    await candidate.open()
    try:
        await _drive(candidate.write, 100, concurrency)  # warm-up: connections, statement caches
        await _drive(candidate.read, 100, concurrency)
        figures = []
        for operation in (candidate.write, candidate.read):
            cpu, wall = time.process_time(), time.perf_counter()
            await _drive(operation, count, concurrency)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            figures += [cpu * 1000 / count, count / wall]
    finally:
        await candidate.close()
    return Figures(candidate.name, *figures)


def _report(title: str, results: list[Figures]) -> None:
    base = results[0]
    print(f"\n{title}")
    print(
        f"{'path':<18} {'write CPU ms':>12} {'writes/s':>9} {'vs today':>9}"
        f" {'read CPU ms':>12} {'reads/s':>8} {'vs today':>9}"
    )
    for f in results:
        print(
            f"{f.name:<18} {f.write_cpu_ms:>12.3f} {f.write_per_s:>9.0f}"
            f" {base.write_cpu_ms / f.write_cpu_ms:>8.1f}x"
            f" {f.read_cpu_ms:>12.3f} {f.read_per_s:>8.0f}"
            f" {base.read_cpu_ms / f.read_cpu_ms:>8.1f}x"
        )
    print(
        "(\"vs today\": today's CPU per transaction / this path's; higher is cheaper)", flush=True
    )


async def _fresh_postgres(dsn: str) -> tuple[str, str]:
    name = f"bench_data_layer_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, f"{dsn.rsplit('/', 1)[0]}/{name}"


async def _drop_postgres(dsn: str, name: str) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def main(arguments: argparse.Namespace) -> None:
    count, concurrency = arguments.transactions, arguments.concurrency
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores,"
        f" load average {os.getloadavg()[0]:.1f}; {count} transactions per path,"
        f" {concurrency} concurrent",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "bench.sqlite3")
        url = f"sqlite+aiosqlite:///{path}"
        sqlite_results = []
        sqlite_candidates: tuple[Candidate, ...] = (
            SqlAlchemyAsync(url),
            SqliteThread(path),
            SqlAlchemySyncSqlite(path),
            KitDatabase(url),
        )
        for candidate in sqlite_candidates:
            print(f"sqlite: {candidate.name} ...", flush=True)
            sqlite_results.append(await _measure(candidate, url, count, concurrency))
        _report("SQLite (WAL, synchronous=FULL default)", sqlite_results)
    if arguments.no_postgres:
        return
    dsn = arguments.postgres or admin_dsn()
    try:
        name, plain = await _fresh_postgres(dsn)
    except (OSError, asyncpg.PostgresError) as error:
        raise SystemExit(
            f"PostgreSQL is not reachable at {dsn!r} ({error}); use --no-postgres"
        ) from None
    try:
        url = plain.replace("postgresql://", "postgresql+asyncpg://", 1)
        postgres_results = []
        postgres_candidates: tuple[Candidate, ...] = (
            SqlAlchemyAsync(url),
            AsyncpgDirect(plain),
            SqlAlchemyRunSyncPostgres(url),
            KitDatabase(url),
        )
        for candidate in postgres_candidates:
            print(f"postgres: {candidate.name} ...", flush=True)
            postgres_results.append(await _measure(candidate, url, count, concurrency))
        _report("PostgreSQL (client process CPU only)", postgres_results)
    finally:
        await _drop_postgres(dsn, name)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--postgres", help="admin DSN (default EMPORIUM_TEST_POSTGRES_DSN)")
    parser.add_argument("--no-postgres", action="store_true")
    arguments = parser.parse_args()
    if arguments.transactions < 1 or arguments.concurrency < 1:
        parser.error("--transactions and --concurrency must be at least 1")
    return arguments


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
