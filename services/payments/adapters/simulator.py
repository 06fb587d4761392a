"""The built-in payment provider: a simulator with configurable latency, decline rate and
transient failure rate, for local runs, tests and load.

Its ledger (a SQLite file shared by every worker process, standing in for the provider's own
books) holds one record per idempotency key (authorized, declined, captured, voided,
refunded), an append-only log of the operations that moved it, and every request that asked,
so a test can prove that redelivered requests never authorized twice.
"""

from __future__ import annotations

import asyncio
import fcntl
import random
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from libs.money import Money
from libs.storage.transaction import QUICK_HANDOVER
from services.payments.domain.model import ProviderRecord, ProviderStatus
from services.payments.domain.ports import ProviderRefused, ProviderUnavailable

ALWAYS_DECLINED = "cards/declined"
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
  idempotency_key TEXT PRIMARY KEY, reference TEXT NOT NULL, status TEXT NOT NULL,
  decline_reason TEXT NOT NULL, currency TEXT NOT NULL, amount_nanos INTEGER NOT NULL,
  captured_nanos INTEGER NOT NULL DEFAULT 0, refunded_nanos INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS operations (idempotency_key TEXT NOT NULL, operation TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS operations_key ON operations (idempotency_key);
CREATE TABLE IF NOT EXISTS requests (idempotency_key TEXT NOT NULL, operation TEXT NOT NULL);
"""
_RECORD = (
    "SELECT idempotency_key, status, currency, amount_nanos, reference, decline_reason,"
    " captured_nanos, refunded_nanos FROM accounts"
)


class SimulatedProvider:
    def __init__(
        self,
        ledger: Path,
        *,
        latency: float = 0.05,
        jitter: float = 0.0,
        decline_rate: float = 0.0,
        transient_failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self._latency = latency
        self._jitter = jitter
        self._decline_rate = decline_rate
        self._transient_failure_rate = transient_failure_rate
        self._rng = rng or random.Random()
        ledger.parent.mkdir(parents=True, exist_ok=True)
        # One connection for the process, on one thread of its own: each operation is one hop
        # there and one transaction. Other processes share the file (WAL, and BEGIN IMMEDIATE
        # around each operation: one writer at a time, across processes). Writers take turns
        # on a lock file first: the kernel wakes the next one as soon as the lock is let go,
        # where SQLite's busy handler would poll with sleeps growing to 100 ms (replicas busy
        # on two cores waited up to half a second for the ledger).
        self._thread = ThreadPoolExecutor(1, "payment-ledger")
        self._turns = open(f"{ledger}.lock", "a+")  # noqa: SIM115 (open while the provider is)
        self._connection = self._thread.submit(_open_ledger, ledger).result()
        self._thread.submit(self._carry_over_charges).result()

    def _carry_over_charges(self) -> None:
        """A ledger from before authorize/capture keeps one-step charges (`charges`, `refunds`):
        each becomes the record of its key, captured (or refunded, or declined)."""
        tables = {row[0] for row in self._connection.execute("SELECT name FROM sqlite_master")}
        if not {"charges", "refunds"} <= tables:
            return
        fcntl.flock(self._turns, fcntl.LOCK_EX)
        try:
            self._migrate_charges()
        finally:
            fcntl.flock(self._turns, fcntl.LOCK_UN)

    def _migrate_charges(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")
        self._connection.execute(
            "ALTER TABLE requests ADD COLUMN operation TEXT NOT NULL DEFAULT 'authorize'"
        )
        self._connection.execute(
            "INSERT OR IGNORE INTO accounts SELECT c.idempotency_key, c.reference,"
            " CASE WHEN c.approved = 0 THEN 'DECLINED'"
            " WHEN r.idempotency_key IS NOT NULL THEN 'REFUNDED' ELSE 'CAPTURED' END,"
            " c.decline_reason, c.currency, c.amount_nanos,"
            " CASE WHEN c.approved = 0 THEN 0 ELSE c.amount_nanos END,"
            " CASE WHEN r.idempotency_key IS NULL OR c.approved = 0 THEN 0"
            " ELSE c.amount_nanos END"
            " FROM charges c LEFT JOIN refunds r ON r.idempotency_key = c.idempotency_key"
        )
        self._connection.execute("DROP TABLE charges")
        self._connection.execute("DROP TABLE refunds")
        self._connection.execute("COMMIT")

    def close(self) -> None:
        self._thread.submit(self._connection.close).result()
        self._thread.shutdown()
        self._turns.close()

    async def _call(
        self, operation: Callable[[sqlite3.Connection], T], *, fallible: bool = True
    ) -> T:
        # Half the round trip before the provider acts, half for its answer to come back: a
        # worker that dies in the second half has moved money without knowing it.
        latency = self._latency + self._rng.random() * self._jitter
        await asyncio.sleep(latency / 2)
        if fallible and self._rng.random() < self._transient_failure_rate:
            raise ProviderUnavailable("simulated provider outage")
        result = await self._run(operation, write=True)
        await asyncio.sleep(latency / 2)
        return result

    async def _run(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        loop = asyncio.get_running_loop()
        transaction = self._write if write else self._read
        with QUICK_HANDOVER:  # the ledger's thread takes the GIL back after each statement
            return await loop.run_in_executor(self._thread, transaction, operation)

    def _write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        fcntl.flock(self._turns, fcntl.LOCK_EX)  # this process's turn among the writers
        try:
            return self._transaction(operation, "BEGIN IMMEDIATE")
        finally:
            fcntl.flock(self._turns, fcntl.LOCK_UN)

    def _read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        return self._transaction(operation, "BEGIN")  # WAL: a reader waits for no writer

    def _transaction(self, operation: Callable[[sqlite3.Connection], T], begin: str) -> T:
        connection = self._connection
        connection.execute(begin)
        try:
            result = operation(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    async def authorize(self, key: str, amount: Money, method: str) -> ProviderRecord:
        declined = method == ALWAYS_DECLINED or self._rng.random() < self._decline_rate

        def authorize_once(connection: sqlite3.Connection) -> ProviderRecord:
            connection.execute("INSERT INTO requests VALUES (?, 'authorize')", (key,))
            earlier = _record(connection, key)
            if earlier is not None:
                return earlier
            record = ProviderRecord(
                key=key,
                status=ProviderStatus.DECLINED if declined else ProviderStatus.AUTHORIZED,
                amount=Money.from_total_nanos(amount.currency_code, amount.total_nanos),
                reference=f"sim_{uuid.uuid4().hex[:16]}",
                decline_reason="card declined" if declined else "",
                captured=Money.from_total_nanos(amount.currency_code, 0),
                refunded=Money.from_total_nanos(amount.currency_code, 0),
            )
            connection.execute(
                "INSERT INTO accounts (idempotency_key, reference, status, decline_reason,"
                " currency, amount_nanos) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    record.reference,
                    record.status.value,
                    record.decline_reason,
                    amount.currency_code,
                    amount.total_nanos,
                ),
            )
            connection.execute("INSERT INTO operations VALUES (?, 'authorize')", (key,))
            return record  # as written: no need to read it back

        return await self._call(authorize_once)

    async def capture(self, key: str, reference: str, amount: Money) -> None:
        await self._call(
            lambda c: _move(c, key, "capture", ProviderStatus.AUTHORIZED, ProviderStatus.CAPTURED)
        )

    async def void(self, key: str, reference: str) -> None:
        await self._call(
            lambda c: _move(c, key, "void", ProviderStatus.AUTHORIZED, ProviderStatus.VOIDED)
        )

    async def refund(self, key: str, reference: str, amount: Money) -> None:
        await self._call(
            lambda c: _move(c, key, "refund", ProviderStatus.CAPTURED, ProviderStatus.REFUNDED)
        )

    async def outcome(self, key: str) -> ProviderRecord | None:
        # The reporting side stays up through a simulated outage of the payment side, so a
        # reconciler can settle what the outage left behind.
        return await self._call(lambda c: _look_up(c, key), fallible=False)

    async def records(self) -> list[ProviderRecord]:
        def read(connection: sqlite3.Connection) -> list[ProviderRecord]:
            return [_from_row(row) for row in connection.execute(_RECORD).fetchall()]

        return await self._run(read, write=False)


def _open_ledger(ledger: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(ledger, timeout=30, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    # WAL with synchronous=NORMAL: a commit survives the death of any process (the chaos and
    # crash tests kill workers), not a power cut; it needs no fsync per operation.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(_SCHEMA)
    return connection


def _move(
    connection: sqlite3.Connection,
    key: str,
    operation: str,
    source: ProviderStatus,
    target: ProviderStatus,
) -> None:
    connection.execute("INSERT INTO requests VALUES (?, ?)", (key, operation))
    record = _record(connection, key)
    if record is None:
        if operation == "void":
            return  # nothing held under this key: nothing to let go
        raise ProviderRefused(f"{operation}: no authorization under key {key!r}")
    if record.status is target:
        return  # asked again: the first outcome stands
    if record.status is not source:
        if operation == "void" and record.status is ProviderStatus.DECLINED:
            return
        raise ProviderRefused(f"{operation}: key {key!r} is {record.status.value.lower()}")
    column = {
        "capture": ", captured_nanos = amount_nanos",
        "refund": ", refunded_nanos = captured_nanos",
    }
    connection.execute(
        f"UPDATE accounts SET status = ?{column.get(operation, '')} WHERE idempotency_key = ?",
        (target.value, key),
    )
    connection.execute("INSERT INTO operations VALUES (?, ?)", (key, operation))


def _look_up(connection: sqlite3.Connection, key: str) -> ProviderRecord | None:
    connection.execute("INSERT INTO requests VALUES (?, 'outcome')", (key,))
    return _record(connection, key)


def _record(connection: sqlite3.Connection, key: str) -> ProviderRecord | None:
    row = connection.execute(_RECORD + " WHERE idempotency_key = ?", (key,)).fetchone()
    return _from_row(row) if row else None


def _from_row(row: tuple[str, str, str, int, str, str, int, int]) -> ProviderRecord:
    key, status, currency, amount, reference, decline_reason, captured, refunded = row
    return ProviderRecord(
        key=key,
        status=ProviderStatus(status),
        amount=Money.from_total_nanos(currency, amount),
        reference=reference,
        decline_reason=decline_reason,
        captured=Money.from_total_nanos(currency, captured),
        refunded=Money.from_total_nanos(currency, refunded),
    )


def ledger_charges(ledger: Path) -> dict[str, int]:
    """How many authorizations the provider made, per idempotency key (for tests)."""
    return _per_key(
        ledger,
        "SELECT idempotency_key, count(*) FROM operations"
        " WHERE operation = 'authorize' GROUP BY idempotency_key",
    )


def ledger_requests(ledger: Path, operation: str = "authorize") -> dict[str, int]:
    """How many requests for `operation` (authorize, capture, void, refund, outcome) arrived,
    per idempotency key."""
    return _per_key(
        ledger,
        "SELECT idempotency_key, count(*) FROM requests WHERE operation = ?"
        " GROUP BY idempotency_key",
        (operation,),
    )


def _per_key(ledger: Path, query: str, parameters: tuple[str, ...] = ()) -> dict[str, int]:
    connection = sqlite3.connect(ledger)
    try:
        rows = connection.execute(query, parameters).fetchall()
    finally:
        connection.close()
    return {key: count for key, count in rows}
