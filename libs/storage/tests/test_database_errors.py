"""database_errors: what the RPC edge answers for a database failure, through either driver."""

from __future__ import annotations

import sqlite3

import asyncpg

from libs.runtime.errors import ErrorKind
from libs.storage.database import database_errors


def test_a_full_or_unreachable_server_is_unavailable_not_internal() -> None:
    for error in (
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        ConnectionRefusedError(111, "refused"),
        sqlite3.OperationalError("unable to open database file"),
    ):
        translated = database_errors(error)
        assert translated is not None, error
        assert (translated.kind, translated.reason) == (
            ErrorKind.UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
        )


def test_a_unique_violation_is_a_conflict_and_other_errors_are_left_alone() -> None:
    for error in (asyncpg.UniqueViolationError("duplicate key"), sqlite3.IntegrityError("UNIQUE")):
        translated = database_errors(error)
        assert translated is not None and translated.kind is ErrorKind.ALREADY_EXISTS
    assert database_errors(ValueError("not a database error")) is None
