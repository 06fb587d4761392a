"""mesh/components/postgres/init.sh, as the postgres image runs it on an empty data directory:
a role with its password from the postgres-roles Secret and a database it owns, per file."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from libs.testing.databases import admin_dsn
from tools.commands.contracts.check import REPO

INIT = REPO / "mesh" / "components" / "postgres" / "init.sh"


@pytest.mark.postgres
async def test_init_creates_a_role_and_database_per_secret_key(tmp_path: Path) -> None:
    names = [f"emporium_init_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    roles = tmp_path / "roles"
    roles.mkdir()
    for name in names:
        # Quotes and a backslash: the password reaches SQL as a literal, never as code.
        (roles / name).write_text(f"pa's\\s-{name}")
    admin = urlsplit(admin_dsn())
    env = {
        **os.environ,
        "ROLES_DIR": str(roles),
        "POSTGRES_USER": admin.username or "postgres",
        "PGHOST": admin.hostname or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "PGPASSWORD": admin.password or "",
    }
    process = await asyncio.create_subprocess_exec(
        "sh", str(INIT), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, errors = await process.communicate()
    try:
        assert process.returncode == 0, errors.decode()
        for name in names:
            connection = await asyncpg.connect(
                host=env["PGHOST"], port=int(env["PGPORT"]), user=name,
                password=f"pa's\\s-{name}", database=name,
            )  # fmt: skip
            try:
                owner = await connection.fetchval(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", name
                )
                assert owner == name
            finally:
                await connection.close()
    finally:
        connection = await asyncpg.connect(admin_dsn())
        try:
            for name in names:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
                await connection.execute(f'DROP ROLE IF EXISTS "{name}"')
        finally:
            await connection.close()
