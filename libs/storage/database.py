"""Database: whole transactions from a URL (`Database.transaction`), a liveness probe, and
migrations run at start.

SQLite is the embedded default (the standard `sqlite3` module on the database's own writer and
reader threads); PostgreSQL (asyncpg) is used when the URL says so. Migrations are ordered,
numbered steps recorded in `schema_migrations`, applied in one transaction through SQLAlchemy
(an engine that lives only while they run). (Alembic would add a script directory and env.py
per service for what is, here, a list of DDL steps applied at start.)
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
from opentelemetry import metrics
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from libs.runtime.errors import DomainError, ErrorKind
from libs.storage.transaction import (
    LoopReader,
    Row,
    SqliteThread,
    Transaction,
    TransactionFunction,
    run_postgres,
)

log = logging.getLogger("emporium.storage")

SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
_open: weakref.WeakSet[Database] = weakref.WeakSet()
T = TypeVar("T")


def _pool_usage(_options: metrics.CallbackOptions) -> list[metrics.Observation]:
    """`db.client.connections.usage` (the database conventions): connections in use and idle
    in each open Database: its asyncpg pool, or its SQLite writer and reader connections."""
    observations = []
    for database in list(_open):
        usage: dict[str, tuple[int, int]] = {}  # pool name: (used, idle)
        for write, thread in list(database._threads.items()):
            kind = "writer" if write else "reader"
            usage[f"{database.pool_name} ({kind})"] = (int(thread.busy), int(not thread.busy))
        if database.asyncpg_pool is not None:
            idle = database.asyncpg_pool.get_idle_size()
            usage[database.pool_name] = (database.asyncpg_pool.get_size() - idle, idle)
        for pool_name, (used, idle) in usage.items():
            name = {"db.client.connections.pool.name": pool_name}
            observations += [
                metrics.Observation(used, {**name, "state": "used"}),
                metrics.Observation(idle, {**name, "state": "idle"}),
            ]
    return observations


def _statements(_options: metrics.CallbackOptions) -> list[metrics.Observation]:
    """`db.client.statements`: statements each open Database's transactions have sent, BEGIN and
    COMMIT not counted (bench/orders.py divides it by the orders placed)."""
    return [
        metrics.Observation(
            database.statements, {"db.client.connections.pool.name": database.pool_name}
        )
        for database in list(_open)
    ]


_meter = metrics.get_meter("emporium.storage")
_meter.create_observable_up_down_counter(
    "db.client.connections.usage", [_pool_usage], description="pool connections by state"
)
_meter.create_observable_counter(
    "db.client.statements", [_statements], unit="{statement}", description="statements sent"
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[AsyncConnection], Awaitable[None]]


def creating_tables(version: int, description: str, metadata: sa.MetaData) -> Migration:
    """A migration that creates the tables of `metadata` that do not exist yet."""

    async def create(connection: AsyncConnection) -> None:
        await connection.run_sync(metadata.create_all)

    return Migration(version, description, create)


class Database:
    def __init__(self, url: str, *, connect_timeout: float = 5.0, pool_size: int = 10) -> None:
        parsed = make_url(url)
        if parsed.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
                f"use one of {', '.join(d + '://' for d in SUPPORTED_DRIVERS)}"
            )
        self.url = parsed
        self.pool_name = parsed.render_as_string(hide_password=True)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.statements = 0
        self.asyncpg_pool: asyncpg.Pool | None = None
        self.pool_size = pool_size  # Database.transaction's connections on PostgreSQL, at most
        self._connect_timeout = connect_timeout
        self._pool_opening = asyncio.Lock()
        self._threads: dict[bool, SqliteThread] = {}
        self._loop_reader: LoopReader | None = None  # SQLite's short reads, on the loop
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        _open.add(self)

    async def transaction(self, function: TransactionFunction[T], *, write: bool = True) -> T:
        """Runs `function` as one transaction, handed to the driver whole (libs/storage/
        transaction.py): on SQLite the database's writer thread (BEGIN IMMEDIATE), or for a
        read the event loop's own thread while it takes under 2 ms (`LoopReader`) and else the
        reader thread; on PostgreSQL an asyncpg connection. SQLite admits one writer per file:
        the one writer connection per process keeps this process's writers out of SQLite's
        busy handler, which polls with sleeps. Concurrent calls run concurrently on
        PostgreSQL; correctness comes from the database (conditional UPDATEs, unique keys,
        `FOR UPDATE` row locks), never an application lock. An IntegrityError reaches the
        caller as it is (a repository may turn it into its own error); one nobody handles
        becomes ALREADY_EXISTS at the RPC
        edge (`database_errors`)."""
        if self.is_sqlite:
            if not write:
                if self._loop_reader is None:
                    self._loop_reader = LoopReader(self.url.database or ":memory:")
                done = self._loop_reader.run(function)
                if done is not None:
                    self.statements += done[1]
                    return done[0]
            thread = self._threads.get(write)
            if thread is None:
                path = self.url.database or ":memory:"
                name = f"sqlite-{'writer' if write else 'reader'}"
                thread = self._threads[write] = SqliteThread(path, name)
            result, statements = await thread.run(function, write=write)
        else:
            result, statements = await run_postgres(await self._pool(), function, write=write)
        self.statements += statements
        return result

    async def fetchrow(self, query: str, *args: Any) -> Row | None:
        """The first row of one query, or None. A single statement needs no transaction around
        it (it sees one snapshot and changes nothing): on PostgreSQL it goes to a pooled
        connection as it is, one round trip where a read transaction takes three (BEGIN READ
        ONLY, the query, COMMIT); on SQLite it is a read like any other. A read of several
        statements that must agree uses `transaction(..., write=False)`."""
        if self.is_sqlite:

            async def read(tx: Transaction) -> Row | None:
                return await tx.fetchrow(query, *args)

            return await self.transaction(read, write=False)
        async with (await self._pool()).acquire() as connection:
            row: Row | None = await connection.fetchrow(query, *args)
        self.statements += 1
        return row

    async def _pool(self) -> asyncpg.Pool:
        async with self._pool_opening:
            if self.asyncpg_pool is None:
                dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)

                async def keep_session(_connection: asyncpg.Connection) -> None:
                    """A transaction function leaves no session state (`Transaction` runs
                    statements inside one transaction: no SET, LISTEN, cursor or advisory lock
                    outlives it), so a released connection skips asyncpg's reset query
                    (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *, RESET ALL): one round trip
                    less per transaction. asyncpg still rolls back a transaction left open."""

                # min_size 0: connections are opened as transactions need them.
                # max_size: the transactions this process runs at once (a service's
                # <SERVICE>_DATABASE_POOL_SIZE where it has one); the fleet's processes x
                # max_size must stay within the server's max_connections.
                self.asyncpg_pool = await asyncpg.create_pool(
                    dsn,
                    min_size=0,
                    max_size=self.pool_size,
                    reset=keep_session,
                    timeout=self._connect_timeout,
                )
            return self.asyncpg_pool

    async def ping(self) -> None:
        """Raises while the database cannot answer a query."""

        async def select_one(tx: Transaction) -> None:
            await tx.fetchrow("SELECT 1")

        await self.transaction(select_one, write=False)

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Applies the migrations not yet recorded; returns the versions applied. Processes
        starting together (workers, replicas) take turns: a PostgreSQL advisory lock, or a
        file lock beside the SQLite file."""
        async with self._migration_lock():
            engine = self._migration_engine()
            try:
                async with engine.begin() as connection:
                    return await self._apply(connection, migrations)
            finally:
                await engine.dispose()

    def _migration_engine(self) -> AsyncEngine:
        """SQLAlchemy for the migrations only (they are written against an AsyncConnection):
        one connection, closed when they are done."""
        if not self.is_sqlite:
            timeout = {"timeout": self._connect_timeout}
            return create_async_engine(self.url, poolclass=NullPool, connect_args=timeout)
        engine = create_async_engine(self.url, poolclass=NullPool, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine

    async def _apply(
        self, connection: AsyncConnection, migrations: Sequence[Migration]
    ) -> list[int]:
        if not self.is_sqlite:
            await connection.execute(sa.text("SELECT pg_advisory_xact_lock(7305)"))
        await connection.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, description TEXT NOT NULL)"
            )
        )
        rows = await connection.execute(sa.text("SELECT version FROM schema_migrations"))
        done = {row[0] for row in rows}
        applied = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            await migration.apply(connection)
            await connection.execute(
                sa.text("INSERT INTO schema_migrations VALUES (:v, :d)"),
                {"v": migration.version, "d": migration.description},
            )
            log.info(
                "migrated",
                extra={"version": migration.version, "description": migration.description},
            )
            applied.append(migration.version)
        return applied

    @asynccontextmanager
    async def _migration_lock(self) -> AsyncIterator[None]:
        if not self.is_sqlite or not self.url.database or self.url.database == ":memory:":
            yield
            return
        lock_file = await asyncio.to_thread(open, f"{self.url.database}.migrate-lock", "a+")
        try:
            await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
            yield
        finally:
            lock_file.close()  # closing releases the lock

    async def dispose(self) -> None:
        if self._loop_reader is not None:
            self._loop_reader.close()
            self._loop_reader = None
        for thread in self._threads.values():
            await asyncio.to_thread(thread.close)
        self._threads.clear()
        if self.asyncpg_pool is not None:
            pool, self.asyncpg_pool = self.asyncpg_pool, None
            try:
                # close() waits for every connection to come back: a transaction stuck on a
                # lost server would hold the shutdown forever.
                await asyncio.wait_for(pool.close(), self._connect_timeout)
            except TimeoutError:
                log.warning(
                    "connections still in use after %.0f s; closing them",
                    self._connect_timeout,
                    extra={"pool": self.pool_name},
                )
                pool.terminate()


# A unique key taken by a concurrent write, through either path (SQLAlchemy, Database.transaction).
UNIQUE_VIOLATIONS = (IntegrityError, sqlite3.IntegrityError, asyncpg.UniqueViolationError)


def database_errors(error: Exception) -> DomainError | None:
    """ExceptionTranslator: a lost or refused database connection is UNAVAILABLE (retryable),
    not INTERNAL; a unique-constraint race no repository turned into its own error is
    ALREADY_EXISTS `CONFLICT`."""
    driver_error = error.orig if isinstance(error, DBAPIError) else error
    if str(getattr(driver_error, "sqlstate", "") or "")[:2] in (
        "08",  # connection exception
        "53",  # insufficient resources: too many connections, out of memory or disk
        "57",  # operator intervention: the server is shutting down
    ):
        return _unavailable()
    if isinstance(error, UNIQUE_VIOLATIONS):
        return DomainError(
            ErrorKind.ALREADY_EXISTS, "CONFLICT", "a concurrent write took the same key"
        )
    if isinstance(
        error,
        OSError
        | TimeoutError
        | sqlite3.OperationalError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError,
    ) or (
        isinstance(error, DBAPIError)
        and (error.connection_invalidated or isinstance(error, OperationalError | InterfaceError))
    ):
        return _unavailable()
    return None


def _unavailable() -> DomainError:
    return DomainError(
        ErrorKind.UNAVAILABLE, "DATABASE_UNAVAILABLE", "the database is unavailable; retry later"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    # As libs/storage/transaction.py's connections: WAL, busy_timeout, foreign keys. The
    # driver's own implicit BEGIN is off: `_sqlite_begin_immediate` begins.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(connection: sa.Connection) -> None:
    """Migrations write: their transaction takes the write lock at BEGIN."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")
