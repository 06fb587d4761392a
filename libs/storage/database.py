"""Database: an async engine from a URL, a liveness probe, and migrations run at start.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) is used when the URL says so.
Migrations are ordered, numbered steps recorded in `schema_migrations`, applied in one
transaction. (Alembic would add a script directory and env.py per service for what is, here, a
list of DDL steps applied at start.)
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from opentelemetry import metrics
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from libs.runtime.errors import DomainError, ErrorKind

log = logging.getLogger("emporium.storage")

SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
_open: weakref.WeakSet[Database] = weakref.WeakSet()


def _pool_usage(_options: metrics.CallbackOptions) -> list[metrics.Observation]:
    """`db.client.connections.usage` (the database conventions): connections in use and idle
    in each open Database's pool."""
    observations = []
    for database in list(_open):
        pool = database.engine.pool
        if isinstance(pool, QueuePool):
            name = {"db.client.connections.pool.name": database.pool_name}
            observations += [
                metrics.Observation(pool.checkedout(), {**name, "state": "used"}),
                metrics.Observation(pool.checkedin(), {**name, "state": "idle"}),
            ]
    return observations


metrics.get_meter("emporium.storage").create_observable_up_down_counter(
    "db.client.connections.usage", [_pool_usage], description="pool connections by state"
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
    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        parsed = make_url(url)
        if parsed.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
                f"use one of {', '.join(d + '://' for d in SUPPORTED_DRIVERS)}"
            )
        self.url = parsed
        self.pool_name = parsed.render_as_string(hide_password=True)
        self._write_lock = asyncio.Lock()
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(parsed, connect_args={"timeout": 30})
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(
                parsed,
                pool_pre_ping=True,
                pool_size=10,
                connect_args={"timeout": connect_timeout},
            )
        _open.add(self)

    @asynccontextmanager
    async def writing(self, lock_table: str | None = None) -> AsyncIterator[AsyncConnection]:
        """One write transaction at a time from this process (SQLite allows one writer anyway,
        and a deferred transaction that upgrades to writing can fail instead of waiting). On
        PostgreSQL, `lock_table` also serializes writers across replicas. An IntegrityError
        reaches the caller as it is (a repository may turn it into its own error); one nobody
        handles becomes ALREADY_EXISTS at the RPC edge (`database_errors`)."""
        async with self._write_lock, self.engine.begin() as connection:
            if lock_table is not None and not self.is_sqlite:
                await connection.execute(
                    sa.text(f"LOCK TABLE {lock_table} IN SHARE ROW EXCLUSIVE MODE")
                )
            yield connection

    async def ping(self) -> None:
        """Raises while the database cannot answer a query."""
        async with self.engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Applies the migrations not yet recorded; returns the versions applied. Processes
        starting together (workers, replicas) take turns: a PostgreSQL advisory lock, or a
        file lock beside the SQLite file."""
        async with self._migration_lock(), self.engine.begin() as connection:
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
        await self.engine.dispose()


def database_errors(error: Exception) -> DomainError | None:
    """ExceptionTranslator: a lost or refused database connection is UNAVAILABLE (retryable),
    not INTERNAL; a unique-constraint race no repository turned into its own error is
    ALREADY_EXISTS `CONFLICT`."""
    if isinstance(error, IntegrityError):
        return DomainError(
            ErrorKind.ALREADY_EXISTS, "CONFLICT", "a concurrent write took the same key"
        )
    if isinstance(error, OSError | TimeoutError) or (
        isinstance(error, DBAPIError)
        and (error.connection_invalidated or isinstance(error, OperationalError | InterfaceError))
    ):
        return DomainError(
            ErrorKind.UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            "the database is unavailable; retry later",
        )
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    # WAL lets readers run beside the writer; busy_timeout makes a writer wait, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
