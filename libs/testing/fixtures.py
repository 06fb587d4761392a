"""The pytest plugin every Emporium test suite loads (`-p libs.testing.fixtures`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.testing.broker import fresh_vhost
from libs.testing.databases import fresh_postgres_database, sqlite_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test using it runs once on embedded SQLite and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        async with fresh_postgres_database() as url:
            yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_postgres_database() as url:
        yield url


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the PostgreSQL server")
    # Services default to mTLS. Tests run them without TLS unless a test asks for mtls or mesh
    # itself (tests/security, tests/e2e/test_order_path_grpcurl.py); subprocesses inherit it.
    os.environ.setdefault("EMPORIUM_SECURITY", "insecure")


@pytest.fixture
async def amqp_url() -> AsyncIterator[str]:
    """A fresh RabbitMQ vhost on the test broker."""
    async with fresh_vhost() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    """The test Redis (tools/setup starts one). Tests share it, so each keeps to its own key
    prefix (`redis_key_prefix`)."""
    return os.environ.get("EMPORIUM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_key_prefix() -> str:
    return f"emporium-test-{uuid.uuid4().hex[:12]}:"
