"""The transactional outbox: a service writes its state change and the messages it owes in one
database transaction; the relay publishes them with confirms and marks them sent.

A crash between publishing and marking republishes the message later: the outbox gives
at-least-once delivery, and consumers' inboxes turn that into one effect. The trace context of
the writing request is kept with each row, so the publish and everything after it continue
that trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence

from libs.messaging.envelope import Outgoing, to_amqp, trace_headers
from libs.messaging.metrics import (
    CONFIRMED,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    SENT,
    publish_attributes,
)
from libs.messaging.publisher import Publisher, PublishFailed
from libs.storage.database import Database
from libs.storage.timestamps import now_micros
from libs.storage.transaction import Row, Transaction
from libs.telemetry.business import count_published

log = logging.getLogger("emporium.messaging.outbox")


_COLUMNS = "id, exchange, routing_key, message_id, message_type, correlation_id, headers, body"
_ENQUEUE = (
    "INSERT INTO messaging_outbox (exchange, routing_key, message_id, message_type,"
    " correlation_id, headers, body, create_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)


async def enqueue(tx: Transaction, messages: Sequence[Outgoing]) -> None:
    """Adds `messages` to the outbox inside the caller's transaction (`Database.transaction`).
    Serialize what you can before the transaction: this runs on the database's thread."""
    if not messages:
        return
    headers = json.dumps(trace_headers())
    created = now_micros()
    rows = [
        (
            m.exchange,
            m.routing_key,
            m.message_id,
            m.body.DESCRIPTOR.full_name,
            m.correlation_id,
            headers,
            m.body.SerializeToString(),
            created,
        )
        for m in messages
    ]
    if len(rows) == 1:
        await tx.execute(_ENQUEUE, *rows[0])
    else:
        await tx.executemany(_ENQUEUE, rows)


class OutboxRelay:
    """Publishes unsent outbox rows in order, many confirms in flight per batch.

    `notify()` after a commit publishes at once; otherwise the relay looks every
    `poll_interval` seconds (rows written by another process, or left by a crash). On
    PostgreSQL, replicas share the work (rows are claimed with SKIP LOCKED)."""

    def __init__(
        self,
        database: Database,
        publisher: Publisher,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        retention_seconds: float = 3600.0,
    ) -> None:
        self._database = database
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retention_us = int(retention_seconds * 1_000_000)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self._changed = asyncio.Condition()
        self._backlog_observed = 0.0

    async def wait_until_published(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.published >= count)

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def relay_once(self) -> tuple[int, int]:
        """Publishes one batch; returns (published, failed)."""
        if self._database.is_sqlite:
            sent, failures = await self._relay_sqlite()
        else:
            sent, failures = await self._database.transaction(self._relay_postgres)
        if failures:
            log.warning(
                "outbox publish failed; will retry",
                extra={"failed": len(failures), "error": str(failures[0])},
            )
        async with self._changed:
            self.published += len(sent)
            self._changed.notify_all()
        return len(sent), len(failures)

    async def _relay_sqlite(self) -> tuple[list[int], list[BaseException]]:
        """One process relays. A SQLite transaction function runs on the database's thread and
        may await nothing but its statements, so: read the batch (a reader transaction),
        publish, then mark what the broker confirmed in one write transaction. A crash between
        publishing and marking republishes those rows (at-least-once; inboxes absorb it)."""

        async def unsent(tx: Transaction) -> list[Row]:
            return await tx.fetch(
                f"SELECT {_COLUMNS} FROM messaging_outbox WHERE sent_us IS NULL"
                " ORDER BY id LIMIT $1",
                self._batch_size,
            )

        rows = await self._database.transaction(unsent, write=False)
        if not rows:
            return [], []
        sent, failures = await self._publish_all(rows)
        if sent:
            marked = now_micros()

            async def mark_sent(tx: Transaction) -> None:
                await tx.executemany(
                    "UPDATE messaging_outbox SET sent_us = $1 WHERE id = $2",
                    [(marked, row_id) for row_id in sent],
                )

            await self._database.transaction(mark_sent)
        return sent, failures

    async def _relay_postgres(self, tx: Transaction) -> tuple[list[int], list[BaseException]]:
        """Replicas share the outbox: each claims rows the others have not locked and marks
        them sent in the same statement, publishes while it holds them (asyncpg's transaction
        function may await the broker), and unmarks the ones that failed before commit. A
        crash rolls the marks back, so a row is never lost."""
        rows = await tx.fetch(
            "UPDATE messaging_outbox SET sent_us = $1 WHERE id IN ("
            " SELECT id FROM messaging_outbox WHERE sent_us IS NULL ORDER BY id LIMIT $2"
            f" FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
            now_micros(),
            self._batch_size,
        )
        rows.sort(key=lambda row: int(row["id"]))
        sent, failures = await self._publish_all(rows)
        if len(sent) < len(rows):
            published = set(sent)
            await tx.execute(
                "UPDATE messaging_outbox SET sent_us = NULL WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows if row["id"] not in published],
            )
        return sent, failures

    async def _publish_all(self, rows: Sequence[Row]) -> tuple[list[int], list[BaseException]]:
        results = await asyncio.gather(
            *(self._publish(row) for row in rows), return_exceptions=True
        )
        sent = [row["id"] for row, result in zip(rows, results, strict=True) if result is None]
        count_published(
            row["message_type"] for row, result in zip(rows, results, strict=True) if result is None
        )
        return sent, [r for r in results if isinstance(r, BaseException)]

    async def prune(self) -> None:
        """Deletes rows sent longer than the retention ago."""
        cutoff = now_micros() - self._retention_us

        async def prune(tx: Transaction) -> None:
            await tx.execute("DELETE FROM messaging_outbox WHERE sent_us < $1", cutoff)

        await self._database.transaction(prune)

    async def _publish(self, row: Row) -> None:
        message = to_amqp(
            body=bytes(row["body"]),
            message_type=row["message_type"],
            message_id=row["message_id"],
            correlation_id=row["correlation_id"],
        )
        attributes = publish_attributes(row["exchange"], row["routing_key"])
        SENT.add(1, attributes)
        await self._publisher.publish_message(
            row["exchange"], row["routing_key"], message, trace_context=json.loads(row["headers"])
        )
        CONFIRMED.add(1, attributes)

    async def observe_backlog(self) -> None:
        """Sets the backlog gauges: unsent rows and the age of the oldest."""

        async def backlog(tx: Transaction) -> Row | None:
            return await tx.fetchrow(
                "SELECT count(*), min(create_us) FROM messaging_outbox WHERE sent_us IS NULL"
            )

        row = await self._database.transaction(backlog, write=False)
        count, oldest = (0, None) if row is None else (row[0], row[1])
        OUTBOX_BACKLOG.set(count)
        OUTBOX_OLDEST_AGE.set(0.0 if oldest is None else (now_micros() - oldest) / 1_000_000)

    async def _run(self) -> None:
        rounds = 0
        while True:
            try:
                published, failed = await self.relay_once()
            except PublishFailed as error:
                log.warning("outbox relay: %s", error)
                published, failed = 0, 1
            except Exception:
                log.exception("outbox relay round failed")
                published, failed = 0, 1
            rounds += 1
            # At most once a second: the count reads the table's unsent rows.
            if time.monotonic() - self._backlog_observed >= 1.0:
                self._backlog_observed = time.monotonic()
                with contextlib.suppress(Exception):
                    await self.observe_backlog()
            if rounds % 1000 == 0:
                with contextlib.suppress(Exception):
                    await self.prune()
            if published == self._batch_size and not failed:
                continue  # more may be waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
