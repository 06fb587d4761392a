"""Timestamps stored as integer microseconds since the epoch: exact and the same on every
database (SQLite has no time zone-aware type)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(microseconds: int) -> datetime:
    return EPOCH + timedelta(microseconds=microseconds)


def now_micros() -> int:
    return to_micros(datetime.now(UTC))


def timestamp_message(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
