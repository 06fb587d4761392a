"""Stream offsets a consumer has handled, stored in its own database with its effects."""

from __future__ import annotations

from libs.storage.transaction import Transaction


async def load_offset(tx: Transaction, consumer: str, stream: str) -> int | None:
    row = await tx.fetchrow(
        'SELECT "offset" FROM messaging_stream_offsets WHERE consumer = $1 AND stream = $2',
        consumer,
        stream,
    )
    return None if row is None else int(row[0])


async def store_offset(tx: Transaction, consumer: str, stream: str, offset: int) -> None:
    await tx.execute(
        'INSERT INTO messaging_stream_offsets (consumer, stream, "offset") VALUES ($1, $2, $3)'
        ' ON CONFLICT (consumer, stream) DO UPDATE SET "offset" = excluded."offset"',
        consumer,
        stream,
        offset,
    )


async def reset_offset(
    tx: Transaction, consumer: str, stream: str, offset: int | None = None
) -> None:
    """Forgets the stored offset (the consumer starts from its configured start), or sets it
    so that the consumer resumes after `offset`."""
    await tx.execute(
        "DELETE FROM messaging_stream_offsets WHERE consumer = $1 AND stream = $2",
        consumer,
        stream,
    )
    if offset is not None:
        await store_offset(tx, consumer, stream, offset)
