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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.envelope import Outgoing, to_amqp, trace_headers
from libs.messaging.metrics import (
    CONFIRMED,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    SENT,
    publish_attributes,
)
from libs.messaging.publisher import Publisher, PublishFailed
from libs.messaging.schema import outbox
from libs.storage.database import Database
from libs.storage.timestamps import now_micros
from libs.storage.transaction import Transaction
from libs.telemetry.business import count_published

log = logging.getLogger("emporium.messaging.outbox")


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
        query = (
            sa.select(outbox)
            .where(outbox.c.sent_us.is_(None))
            .order_by(outbox.c.id)
            .limit(self._batch_size)
        )
        if self._database.is_sqlite:
            # One process relays; reading first and marking in a write transaction avoids
            # upgrading a read transaction (which SQLite may refuse).
            async with self._database.engine.connect() as connection:
                rows = (await connection.execute(query)).all()
            sent, failures = await self._publish_all(rows)
            if sent:
                async with self._database.writing() as connection:
                    await self._mark_sent(connection, sent)
        else:
            # Replicas share the outbox: each claims rows the others have not locked, and marks
            # them sent in the same statement; the ones that fail to publish are unmarked before
            # commit (a crash rolls the marks back, so a row is never lost).
            free = query.with_only_columns(outbox.c.id).with_for_update(skip_locked=True)
            claim = (
                outbox.update()
                .where(outbox.c.id.in_(free.scalar_subquery()))
                .values(sent_us=now_micros())
                .returning(*outbox.c)
            )
            async with self._database.engine.begin() as connection:
                rows = sorted((await connection.execute(claim)).all(), key=lambda row: row.id)
                sent, failures = await self._publish_all(rows)
                unsent = sorted({row.id for row in rows} - set(sent))
                if unsent:
                    await connection.execute(
                        outbox.update().where(outbox.c.id.in_(unsent)).values(sent_us=None)
                    )
        if failures:
            log.warning(
                "outbox publish failed; will retry",
                extra={"failed": len(failures), "error": str(failures[0])},
            )
        async with self._changed:
            self.published += len(sent)
            self._changed.notify_all()
        return len(sent), len(failures)

    async def _publish_all(self, rows: Sequence[Any]) -> tuple[list[int], list[BaseException]]:
        results = await asyncio.gather(
            *(self._publish(row._mapping) for row in rows), return_exceptions=True
        )
        sent = [row.id for row, result in zip(rows, results, strict=True) if result is None]
        count_published(
            row.message_type for row, result in zip(rows, results, strict=True) if result is None
        )
        return sent, [r for r in results if isinstance(r, BaseException)]

    @staticmethod
    async def _mark_sent(connection: AsyncConnection, ids: list[int]) -> None:
        await connection.execute(
            outbox.update().where(outbox.c.id.in_(ids)).values(sent_us=now_micros())
        )

    async def prune(self) -> None:
        async with self._database.writing() as connection:
            await connection.execute(
                outbox.delete().where(outbox.c.sent_us < now_micros() - self._retention_us)
            )

    async def _publish(self, row: Any) -> None:
        message = to_amqp(
            body=row["body"],
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
        query = sa.select(sa.func.count(), sa.func.min(outbox.c.create_us)).where(
            outbox.c.sent_us.is_(None)
        )
        async with self._database.engine.connect() as connection:
            count, oldest = (await connection.execute(query)).one()
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
