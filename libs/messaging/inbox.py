"""The idempotent inbox: a consumer records each message id in the same transaction as the
message's effect, so a redelivered duplicate finds it and changes nothing."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.messaging.schema import inbox
from libs.storage.timestamps import now_micros


async def first_time(connection: AsyncConnection, consumer: str, message_id: str) -> bool:
    """Records `message_id` for `consumer`; False if it was recorded before (a duplicate).
    Call inside the transaction that applies the message's effect."""
    values = {"consumer": consumer, "message_id": message_id, "handled_us": now_micros()}
    insert = (
        sqlite.insert(inbox) if connection.dialect.name == "sqlite" else postgresql.insert(inbox)
    )
    result = await connection.execute(insert.values(values).on_conflict_do_nothing())
    return bool(result.rowcount)


async def seen(connection: AsyncConnection, consumer: str, message_id: str) -> bool:
    row = await connection.execute(
        sa.select(inbox.c.message_id).where(
            inbox.c.consumer == consumer, inbox.c.message_id == message_id
        )
    )
    return row.first() is not None
