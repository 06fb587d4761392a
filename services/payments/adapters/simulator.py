"""The built-in payment provider: a simulator with configurable latency, decline rate and
transient failure rate, for local runs, tests and load.

Its ledger (a SQLite file shared by every worker process, standing in for the provider's own
books) records each charge that moved money and each request that asked for one, so a test
can prove that redelivered requests never charged twice.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import uuid
from pathlib import Path

from libs.money import Money
from services.payments.domain.model import ChargeOutcome
from services.payments.domain.ports import ProviderUnavailable

ALWAYS_DECLINED = "cards/declined"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
  idempotency_key TEXT NOT NULL, reference TEXT NOT NULL, approved INTEGER NOT NULL,
  decline_reason TEXT NOT NULL, currency TEXT NOT NULL, amount_nanos INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS charges_key ON charges (idempotency_key);
CREATE TABLE IF NOT EXISTS requests (idempotency_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refunds (idempotency_key TEXT NOT NULL, reference TEXT NOT NULL);
"""


class SimulatedProvider:
    def __init__(
        self,
        ledger: Path,
        *,
        latency: float = 0.05,
        decline_rate: float = 0.0,
        transient_failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self._ledger = ledger
        self._latency = latency
        self._decline_rate = decline_rate
        self._transient_failure_rate = transient_failure_rate
        self._rng = rng or random.Random()
        ledger.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._ledger, timeout=30, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        return connection

    async def charge(self, idempotency_key: str, amount: Money, method: str) -> ChargeOutcome:
        # Half the round trip before the provider charges, half for its answer to come back:
        # a worker that dies in the second half has charged without knowing it.
        await asyncio.sleep(self._latency / 2)
        if self._rng.random() < self._transient_failure_rate:
            raise ProviderUnavailable("simulated provider outage")
        declined = method == ALWAYS_DECLINED or self._rng.random() < self._decline_rate
        outcome = await asyncio.to_thread(self._charge_once, idempotency_key, amount, declined)
        await asyncio.sleep(self._latency / 2)
        return outcome

    def _charge_once(self, key: str, amount: Money, declined: bool) -> ChargeOutcome:
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")  # one charger at a time, across processes
            connection.execute("INSERT INTO requests VALUES (?)", (key,))
            earlier = connection.execute(
                "SELECT approved, reference, decline_reason FROM charges WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
            if earlier is not None:
                connection.execute("COMMIT")
                return ChargeOutcome(bool(earlier[0]), earlier[1], earlier[2])
            outcome = ChargeOutcome(
                approved=not declined,
                reference=f"sim_{uuid.uuid4().hex[:16]}",
                decline_reason="card declined" if declined else "",
            )
            connection.execute(
                "INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    outcome.reference,
                    int(outcome.approved),
                    outcome.decline_reason,
                    amount.currency_code,
                    amount.total_nanos,
                ),
            )
            connection.execute("COMMIT")
            return outcome
        finally:
            connection.close()

    async def refund(self, idempotency_key: str, reference: str, amount: Money) -> None:
        await asyncio.sleep(self._latency)
        await asyncio.to_thread(self._refund_once, idempotency_key, reference)

    def _refund_once(self, key: str, reference: str) -> None:
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            done = connection.execute(
                "SELECT 1 FROM refunds WHERE idempotency_key = ?", (key,)
            ).fetchone()
            if done is None:
                connection.execute("INSERT INTO refunds VALUES (?, ?)", (key, reference))
            connection.execute("COMMIT")
        finally:
            connection.close()


def ledger_charges(ledger: Path) -> dict[str, int]:
    """How many charges moved money, per idempotency key (for tests and operators)."""
    return _per_key(ledger, "charges")


def ledger_requests(ledger: Path) -> dict[str, int]:
    """How many charge requests arrived, per idempotency key."""
    return _per_key(ledger, "requests")


def _per_key(ledger: Path, table: str) -> dict[str, int]:
    connection = sqlite3.connect(ledger)
    try:
        rows = connection.execute(
            f"SELECT idempotency_key, count(*) FROM {table} GROUP BY idempotency_key"
        ).fetchall()
    finally:
        connection.close()
    return {key: count for key, count in rows}
