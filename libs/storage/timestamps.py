"""Timestamps stored as integer microseconds since the epoch: exact and the same on every
database (SQLite has no time zone-aware type)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(microseconds: int) -> datetime:
    return EPOCH + timedelta(microseconds=microseconds)


def now_micros() -> int:
    return to_micros(datetime.now(UTC))
