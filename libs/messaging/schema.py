"""The tables messaging keeps in a service's own database: the outbox, the inbox and stream
offsets. A service adds `messaging_migration(n)` to its migrations."""

from __future__ import annotations

import sqlalchemy as sa

from libs.storage.database import Migration, creating_tables

metadata = sa.MetaData()

outbox = sa.Table(
    "messaging_outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("exchange", sa.String(120), nullable=False),
    sa.Column("routing_key", sa.String(200), nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("message_type", sa.String(200), nullable=False),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("headers", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("sent_us", sa.BigInteger, nullable=True, index=True),
)

inbox = sa.Table(
    "messaging_inbox",
    metadata,
    sa.Column("consumer", sa.String(120), primary_key=True),
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("handled_us", sa.BigInteger, nullable=False),
)

stream_offsets = sa.Table(
    "messaging_stream_offsets",
    metadata,
    sa.Column("consumer", sa.String(120), primary_key=True),
    sa.Column("stream", sa.String(120), primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
)


def messaging_migration(version: int) -> Migration:
    return creating_tables(version, "messaging: outbox, inbox, stream offsets", metadata)
