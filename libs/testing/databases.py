"""Fresh databases for tests: a new SQLite file, or a new PostgreSQL database on the server
named by EMPORIUM_TEST_POSTGRES_DSN (tools/setup makes one reachable)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

DEFAULT_ADMIN_DSN = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    return os.environ.get("EMPORIUM_TEST_POSTGRES_DSN", DEFAULT_ADMIN_DSN)


def sqlite_url(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / f'test-{uuid.uuid4().hex[:8]}.sqlite3'}"


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """Creates an empty database, yields its SQLAlchemy URL, drops it afterwards."""
    dsn = admin_dsn()
    name = f"emporium_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        raise RuntimeError(
            f"PostgreSQL is not reachable at EMPORIUM_TEST_POSTGRES_DSN={dsn!r} ({error}); "
            "tools/setup starts it"
        ) from error
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = dsn.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        admin = await asyncpg.connect(dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
