"""The idempotent inbox: a consumer records each message id in the same transaction as the
message's effect, so a redelivered duplicate finds it and changes nothing. (A stream consumer
keeps its inbox itself: `seen` before its handler runs, `record` with the offset after.)"""

from __future__ import annotations

from collections.abc import Iterable

from libs.storage.timestamps import now_micros
from libs.storage.transaction import Transaction

_RECORD = (
    "INSERT INTO messaging_inbox (consumer, message_id, handled_us) VALUES ($1, $2, $3)"
    " ON CONFLICT DO NOTHING"
)


async def first_time(tx: Transaction, consumer: str, message_id: str) -> bool:
    """Records `message_id` for `consumer`; False if it was recorded before (a duplicate).
    Call inside the transaction (`Database.transaction`) that applies the message's effect."""
    return bool(await tx.execute(_RECORD, consumer, message_id, now_micros()))


async def record(tx: Transaction, consumer: str, message_ids: Iterable[str]) -> None:
    """Records `message_ids` for `consumer` (those recorded before are left as they are)."""
    handled = now_micros()
    rows = [(consumer, message_id, handled) for message_id in message_ids]
    if len(rows) == 1:
        await tx.execute(_RECORD, *rows[0])
    elif rows:
        await tx.executemany(_RECORD, rows)


async def seen(tx: Transaction, consumer: str, message_ids: Iterable[str]) -> set[str]:
    """Which of `message_ids` `consumer` has recorded."""
    ids = list(message_ids)
    if not ids:
        return set()
    query = "SELECT message_id FROM messaging_inbox WHERE consumer = $1 AND message_id"
    if tx.postgres:  # one prepared statement whatever the count
        rows = await tx.fetch(f"{query} = ANY($2::text[])", consumer, ids)
    else:
        marks = ", ".join(f"${n}" for n in range(2, len(ids) + 2))
        rows = await tx.fetch(f"{query} IN ({marks})", consumer, *ids)
    return {row[0] for row in rows}
