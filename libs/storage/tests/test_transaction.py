"""Database.transaction on SQLite and PostgreSQL: one spelling of the SQL, commit and rollback,
concurrent read-modify-write without lost updates, unique keys, statements counted; migrations
(SQLAlchemy, only while they run) and the liveness probe."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.runtime.errors import ErrorKind
from libs.storage.database import UNIQUE_VIOLATIONS, Database, Migration, database_errors
from libs.storage.transaction import QuickHandover, Transaction, TransactionFunction


async def create_table(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)")
    await tx.execute("INSERT INTO counters (name, value) VALUES ($1, $2)", "orders", 0)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.transaction(create_table)
    yield database
    await database.dispose()


async def value(database: Database) -> int:
    async def read(tx: Transaction) -> int:
        row = await tx.fetchrow("SELECT value FROM counters WHERE name = $1", "orders")
        assert row is not None
        return int(row["value"])

    return await database.transaction(read, write=False)


async def test_a_transaction_commits_what_it_wrote_and_returns_its_result(
    database: Database,
) -> None:
    async def add(tx: Transaction) -> int:
        changed = await tx.execute(
            "UPDATE counters SET value = value + $1 WHERE name = $2", 5, "orders"
        )
        inserted = await tx.fetchrow(
            "INSERT INTO counters (name, value) VALUES ($1, $2) RETURNING value", "payments", 7
        )
        assert inserted is not None and inserted[0] == 7
        return changed

    assert await database.transaction(add) == 1
    assert await value(database) == 5


async def test_an_error_rolls_the_whole_transaction_back(database: Database) -> None:
    async def fail(tx: Transaction) -> None:
        await tx.execute("UPDATE counters SET value = 99 WHERE name = $1", "orders")
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await database.transaction(fail)
    assert await value(database) == 0


async def test_concurrent_read_modify_writes_lose_no_update(database: Database) -> None:
    # Read, then write what was read plus one: the row lock (PostgreSQL) or BEGIN IMMEDIATE
    # (SQLite) makes each see the previous one's result.
    async def increment(tx: Transaction) -> None:
        row = await tx.fetchrow("SELECT value FROM counters WHERE name = $1 FOR UPDATE", "orders")
        assert row is not None
        await tx.execute("UPDATE counters SET value = $1 WHERE name = $2", row[0] + 1, "orders")

    await asyncio.gather(*(database.transaction(increment) for _ in range(20)))
    assert await value(database) == 20


async def test_a_taken_key_is_a_unique_violation_or_nothing_with_on_conflict(
    database: Database,
) -> None:
    async def insert_again(tx: Transaction) -> None:
        await tx.execute("INSERT INTO counters (name, value) VALUES ($1, $2)", "orders", 1)

    with pytest.raises(UNIQUE_VIOLATIONS) as raised:
        await database.transaction(insert_again)
    translated = database_errors(raised.value)
    assert translated is not None and translated.kind is ErrorKind.ALREADY_EXISTS

    async def insert_or_nothing(tx: Transaction) -> int:
        return await tx.execute(
            "INSERT INTO counters (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            "orders",
            1,
        )

    assert await database.transaction(insert_or_nothing) == 0


async def test_statements_are_counted(database: Database) -> None:
    before = database.statements
    await value(database)
    await value(database)
    assert database.statements == before + 2


async def test_a_one_statement_query_answers_its_first_row_or_none(database: Database) -> None:
    before = database.statements
    row = await database.fetchrow("SELECT name, value FROM counters WHERE name = $1", "orders")
    assert row is not None and (row["name"], row[1]) == ("orders", 0)
    assert await database.fetchrow("SELECT value FROM counters WHERE name = $1", "none") is None
    assert database.statements == before + 2


async def test_on_sqlite_a_transaction_function_may_await_only_its_transaction(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/t.sqlite3")
    try:
        await database.transaction(create_table)

        async def waits(tx: Transaction) -> None:
            await tx.execute("UPDATE counters SET value = 1 WHERE name = $1", "orders")
            await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="may await only"):
            await database.transaction(waits)
        assert await value(database) == 0
    finally:
        await database.dispose()


async def test_on_sqlite_a_transaction_whose_caller_gave_up_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    database = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await database.transaction(create_table)

        async def add_one(tx: Transaction) -> None:
            await tx.execute("UPDATE counters SET value = value + 1 WHERE name = $1", "orders")

        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process's writer holds the database
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(database.transaction(add_one), 0.2)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await database.transaction(add_one)  # queued behind the abandoned one on the thread
        assert await value(database) == 1
    finally:
        await database.dispose()


async def test_on_sqlite_a_transaction_given_up_before_its_turn_never_begins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.sqlite3"
    database = Database(f"sqlite+aiosqlite:///{path}")
    begun: list[str] = []

    def adding(name: str) -> TransactionFunction[None]:
        async def add(tx: Transaction) -> None:
            begun.append(name)
            await tx.execute("UPDATE counters SET value = value + 1 WHERE name = $1", "orders")

        return add

    try:
        await database.transaction(create_table)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the thread's first transaction waits for it
        first = asyncio.ensure_future(database.transaction(adding("first")))
        second = asyncio.ensure_future(database.transaction(adding("second")))
        await asyncio.sleep(0)  # both run up to their hand-over: queued behind the blocker
        second.cancel()
        blocker.execute("ROLLBACK")
        blocker.close()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        await database.transaction(adding("third"))  # the thread serves on
        assert begun == ["first", "third"]
        assert await value(database) == 2
    finally:
        await database.dispose()


async def test_migrations_apply_once_and_ping_answers(database_url: str) -> None:
    calls: list[int] = []

    async def create(connection: AsyncConnection) -> None:
        calls.append(1)
        await connection.execute(sa.text("CREATE TABLE things (name TEXT PRIMARY KEY)"))

    migrations = [Migration(1, "things", create)]
    database = Database(database_url)
    try:
        assert await database.migrate(migrations) == [1]
        assert await database.migrate(migrations) == []  # recorded: not applied again
        assert calls == [1]
        await database.ping()

        async def insert(tx: Transaction) -> int:
            return await tx.execute("INSERT INTO things (name) VALUES ($1)", "mug")

        assert await database.transaction(insert) == 1
    finally:
        await database.dispose()


async def test_sqlite_reads_a_short_read_on_the_loop_and_a_long_one_on_its_thread(
    tmp_path: Path,
) -> None:
    """A keyed read runs on the event loop's thread (no hop); one that outlasts the loop's
    budget is interrupted there and answered, whole, from the reader thread."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'reads.sqlite3'}")
    await database.transaction(create_table)
    loop_thread = threading.get_ident()

    async def short(tx: Transaction) -> tuple[int, int]:
        row = await tx.fetchrow("SELECT value FROM counters WHERE name = $1", "orders")
        assert row is not None
        return threading.get_ident(), int(row["value"])

    async def long(tx: Transaction) -> tuple[int, int]:
        # About a million rows counted: far beyond the loop's 2 ms.
        row = await tx.fetchrow(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)"
            " SELECT count(*) FROM n",
            1_000_000,
        )
        assert row is not None
        return threading.get_ident(), int(row[0])

    try:
        assert await database.transaction(short, write=False) == (loop_thread, 0)
        started = time.perf_counter()
        ran_on, counted = await database.transaction(long, write=False)
        assert counted == 1_000_000 and ran_on != loop_thread
        assert time.perf_counter() - started > 0.002  # (the budget it outlasted)
    finally:
        await database.dispose()


async def test_a_sqlite_read_never_waits_on_the_loop_for_a_busy_database(
    tmp_path: Path,
) -> None:
    """While another connection holds the file exclusively (a writer of a database in
    rollback-journal mode, or a WAL recovery), a read finds it busy: it is answered from the
    reader thread, which waits there, and the loop stays free."""
    path = tmp_path / "busy.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)")
    holder.execute("BEGIN EXCLUSIVE")
    database = Database(f"sqlite+aiosqlite:///{path}")
    loop_thread = threading.get_ident()

    async def read(tx: Transaction) -> int:
        await tx.fetchrow("SELECT value FROM counters WHERE name = $1", "orders")
        return threading.get_ident()

    try:
        reading = asyncio.create_task(database.transaction(read, write=False))
        ticks = 0
        while not reading.done() and ticks < 5:  # the loop keeps running while the read waits
            await asyncio.sleep(0)
            ticks += 1
        assert ticks == 5
        holder.execute("COMMIT")
        holder.close()
        assert await asyncio.wait_for(reading, 30) != loop_thread
    finally:
        await database.dispose()


async def test_a_sqlite_write_commits_while_the_loop_is_busy(tmp_path: Path) -> None:
    """The writer thread takes the GIL back after each statement; with CPython's default switch
    interval (5 ms) a loop that never idles made it wait 5 ms each time, 24 to 10,916 steps of
    1 ms in all (bench/gil_handoff.py). The interval is 0.2 ms only while the thread has work."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'notes.sqlite3'}")
    intervals: list[float] = []

    async def create(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")

    async def write(tx: Transaction) -> None:
        intervals.append(sys.getswitchinterval())
        for n in range(3):
            await tx.execute("INSERT INTO notes (body) VALUES ($1)", f"note {n}")

    default = sys.getswitchinterval()
    try:
        await database.transaction(create)  # the writer thread and its connection are ready
        writing = asyncio.ensure_future(database.transaction(write))
        steps = 0
        while not writing.done():  # 1 ms of Python a step, never idle
            deadline = time.perf_counter() + 0.001
            while time.perf_counter() < deadline:
                pass
            steps += 1
            await asyncio.sleep(0)
        await writing
        assert steps <= 20, f"the loop ran {steps} ms of Python before the write committed"
        assert intervals == [pytest.approx(QuickHandover.INTERVAL)]
        assert sys.getswitchinterval() == default
    finally:
        await database.dispose()


async def test_dispose_ends_a_transaction_stuck_on_postgresql_instead_of_waiting_for_it(
    postgres_url: str,
) -> None:
    database = Database(postgres_url, connect_timeout=0.5)
    entered = asyncio.Event()

    async def stuck(tx: Transaction) -> None:
        await tx.execute("SELECT 1")
        entered.set()
        await asyncio.Event().wait()  # a transaction that never ends (a lost server, say)

    holder = asyncio.create_task(database.transaction(stuck))
    await entered.wait()
    started = time.monotonic()
    await asyncio.wait_for(database.dispose(), 10)
    assert time.monotonic() - started < 5
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)  # its connection is gone either way
