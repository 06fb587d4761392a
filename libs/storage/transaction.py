"""Whole transactions handed to the driver in one hop (bench/data_layer.py: 14x less client CPU
than SQLAlchemy async on SQLite, 4x on PostgreSQL).

A repository writes one async transaction function against `Transaction`, in PostgreSQL's
spelling (`$1` placeholders, `ON CONFLICT`, `RETURNING`, `FOR UPDATE [SKIP LOCKED]`):
- PostgreSQL runs it on an asyncpg connection (prepared statements, cached by asyncpg);
- SQLite runs the whole coroutine on the database's own thread with the standard `sqlite3`
  module: its methods never suspend, so one `send(None)` completes it; placeholders become
  `?N` and row locks are dropped (BEGIN IMMEDIATE already admits one writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import queue
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

T = TypeVar("T")


class Row(Protocol):
    """A result row: by column name or position (sqlite3.Row and asyncpg.Record both are)."""

    def __getitem__(self, key: str | int) -> Any: ...


class Transaction(Protocol):
    postgres: bool
    statements: int

    async def execute(self, sql: str, *args: Any) -> int:
        """Runs a statement; returns the rows it changed."""
        ...

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...


TransactionFunction = Callable[[Transaction], Coroutine[Any, Any, T]]


class PostgresTransaction:
    postgres = True

    def __init__(
        self, connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[Any]
    ) -> None:
        self._connection = connection
        self.statements = 0

    async def execute(self, sql: str, *args: Any) -> int:
        self.statements += 1
        status = await self._connection.execute(sql, *args)
        tail = status.rpartition(" ")[2]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        self.statements += 1
        await self._connection.executemany(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        self.statements += 1
        return list(await self._connection.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        self.statements += 1
        row: Row | None = await self._connection.fetchrow(sql, *args)
        return row


_PLACEHOLDER = re.compile(r"\$(\d+)")
_ROW_LOCK = re.compile(r"\s+FOR\s+UPDATE(\s+SKIP\s+LOCKED)?", re.IGNORECASE)


@functools.lru_cache(maxsize=512)
def sqlite_spelling(sql: str) -> str:
    """PostgreSQL's spelling of a statement in SQLite's: `$1` → `?1`, no row locks."""
    return _ROW_LOCK.sub("", _PLACEHOLDER.sub(r"?\1", sql))


class SqliteTransaction:
    postgres = False

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.statements = 0

    async def execute(self, sql: str, *args: Any) -> int:
        self.statements += 1
        return self._connection.execute(sqlite_spelling(sql), args).rowcount

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        self.statements += 1
        self._connection.executemany(sqlite_spelling(sql), args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        self.statements += 1
        return list(self._connection.execute(sqlite_spelling(sql), args).fetchall())

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        self.statements += 1
        # fetchall: the statement runs to its end (an UPDATE … RETURNING is then complete).
        rows = self._connection.execute(sqlite_spelling(sql), args).fetchall()
        return rows[0] if rows else None


async def fetch_page(
    tx: Transaction,
    rows: str,
    total: str,
    arguments: Sequence[Any],
    *,
    limit: int,
    offset: int,
) -> tuple[list[Row], int]:
    """One page of a list: `rows` (ordered, without LIMIT/OFFSET, which come after
    `arguments`) and the `total` the same `arguments` count, in one transaction."""
    n = len(arguments)
    page = await tx.fetch(f"{rows} LIMIT ${n + 1} OFFSET ${n + 2}", *arguments, limit, offset)
    counted = await tx.fetchrow(total, *arguments)
    assert counted is not None
    return page, int(counted[0])


def sqlite_connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    # WAL lets readers run beside the writer; busy_timeout makes another process's writer wait.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA busy_timeout=30000")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


def _complete(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a transaction function whose awaits are all SqliteTransaction's (never suspend)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a SQLite transaction function may await only its Transaction's methods")


class _Cancelled(Exception):
    pass


_SQLITE_BUSY, _SQLITE_INTERRUPT = 5, 9


class LoopReader:
    """Reads on the event loop's own thread while they are short: a keyed read takes tens of
    µs there, where the hop to the reader thread costs about 100 µs of CPU more (GetProduct:
    bench/get_product.py). A read still running after `budget` seconds is interrupted (SQLite's
    progress handler) and so is one that finds the database busy (the loop never waits in
    SQLite's busy handler): `run` returns None and the caller hands it to the reader thread —
    a read changes nothing, so running it again is safe. The loop is held `budget` at most."""

    def __init__(self, path: str, *, budget: float = 0.002) -> None:
        self._path = path
        self._budget = budget
        self._connection: sqlite3.Connection | None = None
        self._owner = threading.get_ident()
        self._deadline = 0.0

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA query_only=ON")
        # Checked every 1,000 virtual machine steps (a few µs): past the budget, interrupt.
        connection.set_progress_handler(lambda: time.perf_counter() > self._deadline, 1000)
        return connection

    def run(self, function: TransactionFunction[T]) -> tuple[T, int] | None:
        if threading.get_ident() != self._owner:
            return None  # the connection belongs to the loop's thread
        if self._connection is None:
            self._connection = self._open()
        connection = self._connection
        transaction = SqliteTransaction(connection)
        self._deadline = time.perf_counter() + self._budget
        try:
            connection.execute("BEGIN")
            result = _complete(function(transaction))
            connection.execute("COMMIT")
        except sqlite3.OperationalError as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if getattr(error, "sqlite_errorcode", None) in (_SQLITE_BUSY, _SQLITE_INTERRUPT):
                return None
            raise
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return result, transaction.statements

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class QuickHandover:
    """While a SqliteThread has work, the loop's thread hands it the GIL every 0.2 ms.

    The `sqlite3` module lets go of the GIL around each statement, and taking it back waits
    until the thread holding it lets go, which a thread running Python does only every switch
    interval (`sys.setswitchinterval`, 5 ms by default): beside a busy event loop each
    statement waited up to 5 ms and a write took seconds (bench/gil_handoff.py). The interval
    is short only while a thread waits for such work: the rest of the time a thread that asks
    for the GIL (gRPC's, the telemetry exporters') gains nothing from forcing the loop's hand
    every 0.2 ms, and each forced hand-over costs both threads a wake-up."""

    INTERVAL = 0.0002  # seconds; CPython's default is 0.005

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0
        self._previous = 0.0

    def __enter__(self) -> None:
        with self._lock:
            if self._waiting == 0:
                self._previous = sys.getswitchinterval()
                sys.setswitchinterval(self.INTERVAL)
            self._waiting += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._waiting -= 1
            if self._waiting == 0:
                sys.setswitchinterval(self._previous)


QUICK_HANDOVER = QuickHandover()


class SqliteThread:
    """One thread owning one connection; each transaction is one hop to it and one back.

    The hop is a queue the thread waits on and `call_soon_threadsafe` back, not an executor:
    `run_in_executor` (its two futures, their chaining, the executor's bookkeeping) made a
    5-statement write cost 0.239 ms of CPU at 16 concurrent, this 0.206 (`tools/bench
    data_layer`, the `kit` row; bench/README.md)."""

    def __init__(self, path: str, name: str) -> None:
        self._path = path
        self._name = name
        self._queue: queue.SimpleQueue[_Work[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None
        self.busy = False  # a transaction is running (the connections-in-use metric)

    def _serve(self) -> None:
        while (work := self._queue.get()) is not None:
            outcome = work.context.run(self._attempt, work)
            # (RuntimeError: its loop has closed, so nobody waits for it any more.)
            with contextlib.suppress(RuntimeError):
                work.loop.call_soon_threadsafe(work.settle, outcome)
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _run(
        self, function: TransactionFunction[T], begin: str, cancelled: threading.Event
    ) -> tuple[T, int]:
        if self._connection is None:
            self._connection = sqlite_connect(self._path)
        connection = self._connection
        transaction = SqliteTransaction(connection)
        self.busy = True
        try:
            connection.execute(begin)  # may wait for another process's writer (busy_timeout)
            try:
                result = _complete(function(transaction))
                if cancelled.is_set():  # its caller gave up (a deadline) while this waited
                    raise _Cancelled
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:  # (a failed COMMIT leaves it open too)
                    connection.execute("ROLLBACK")
                raise
        finally:
            self.busy = False
        return result, transaction.statements

    def _attempt(self, work: _Work[T]) -> tuple[T, int] | BaseException:
        """The outcome, an exception included (raised on the loop)."""
        if work.cancelled.is_set():  # given up before its turn came: not even begun
            return _Cancelled()
        try:
            return self._run(work.function, work.begin, work.cancelled)
        except BaseException as error:
            return error

    async def run(self, function: TransactionFunction[T], *, write: bool) -> tuple[T, int]:
        if self._thread is None:
            # A daemon: a process that exits without closing its Database must not hang on
            # it; a transaction cut off there was never committed, so it never happened.
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        # The caller's context goes along (as asyncio.to_thread does): the outbox reads the
        # trace context of the request that writes.
        work = _Work(
            function,
            "BEGIN IMMEDIATE" if write else "BEGIN",
            contextvars.copy_context(),
            loop,
            loop.create_future(),
        )
        self._queue.put(work)
        try:
            with QUICK_HANDOVER:
                return await work.done
        except asyncio.CancelledError:
            # The thread cannot be stopped mid-statement, but what it does then is rolled back.
            work.cancelled.set()
            raise

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


@dataclass
class _Work(Generic[T]):
    """One transaction on its way to a SqliteThread and its outcome on the way back."""

    function: TransactionFunction[T]
    begin: str
    context: contextvars.Context
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[tuple[T, int]]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def settle(self, outcome: tuple[T, int] | BaseException) -> None:
        """On the loop: hands the outcome to the caller, unless it stopped waiting."""
        if self.done.cancelled():
            return
        if isinstance(outcome, BaseException):
            self.done.set_exception(outcome)
        else:
            self.done.set_result(outcome)


async def run_postgres(
    pool: asyncpg.Pool, function: TransactionFunction[T], *, write: bool
) -> tuple[T, int]:
    async with pool.acquire() as connection, connection.transaction(readonly=not write):
        transaction = PostgresTransaction(connection)
        result = await function(transaction)
        return result, transaction.statements
