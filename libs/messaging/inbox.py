"""The idempotent inbox: a consumer records each message id in the same transaction as the
message's effect, so a redelivered duplicate finds it and changes nothing."""

from __future__ import annotations

from collections.abc import Iterable

from libs.storage.timestamps import now_micros
from libs.storage.transaction import Transaction


async def first_time(tx: Transaction, consumer: str, message_id: str) -> bool:
    """Records `message_id` for `consumer`; False if it was recorded before (a duplicate).
    Call inside the transaction (`Database.transaction`) that applies the message's effect."""
    return bool(
        await tx.execute(
            "INSERT INTO messaging_inbox (consumer, message_id, handled_us) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            consumer,
            message_id,
            now_micros(),
        )
    )


async def seen(tx: Transaction, consumer: str, message_ids: Iterable[str]) -> set[str]:
    """Which of `message_ids` `consumer` has recorded."""
    ids = list(message_ids)
    if not ids:
        return set()
    marks = ", ".join(f"${n}" for n in range(2, len(ids) + 2))
    rows = await tx.fetch(
        f"SELECT message_id FROM messaging_inbox WHERE consumer = $1 AND message_id IN ({marks})",
        consumer,
        *ids,
    )
    return {row[0] for row in rows}
