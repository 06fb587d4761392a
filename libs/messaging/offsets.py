"""Stream offsets a consumer has handled, stored in its own database with its effects."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.messaging.schema import stream_offsets


async def load_offset(engine: AsyncEngine, consumer: str, stream: str) -> int | None:
    async with engine.connect() as connection:
        row = await connection.execute(
            sa.select(stream_offsets.c.offset).where(
                stream_offsets.c.consumer == consumer, stream_offsets.c.stream == stream
            )
        )
        value = row.scalar()
    return None if value is None else int(value)


async def store_offset(
    connection: AsyncConnection, consumer: str, stream: str, offset: int
) -> None:
    insert = (
        sqlite.insert(stream_offsets)
        if connection.dialect.name == "sqlite"
        else postgresql.insert(stream_offsets)
    )
    await connection.execute(
        insert.values(consumer=consumer, stream=stream, offset=offset).on_conflict_do_update(
            index_elements=["consumer", "stream"], set_={"offset": offset}
        )
    )


async def reset_offset(
    connection: AsyncConnection, consumer: str, stream: str, offset: int | None = None
) -> None:
    """Forgets the stored offset (the consumer starts from its configured start), or sets it
    so that the consumer resumes after `offset`."""
    await connection.execute(
        stream_offsets.delete().where(
            stream_offsets.c.consumer == consumer, stream_offsets.c.stream == stream
        )
    )
    if offset is not None:
        await store_offset(connection, consumer, stream, offset)
