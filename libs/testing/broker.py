"""Fresh RabbitMQ virtual hosts for tests, so suites sharing one broker never see each
other's queues. The broker is EMPORIUM_TEST_AMQP_URL (tools/setup makes one reachable);
vhosts are made with rabbitmqctl on the same machine."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from yarl import URL

from libs.messaging.broker import DEFAULT_AMQP_URL


def base_url() -> str:
    return os.environ.get("EMPORIUM_TEST_AMQP_URL", DEFAULT_AMQP_URL)


async def rabbitmqctl(*args: str) -> str:
    command = os.environ.get("EMPORIUM_TEST_RABBITMQCTL", "rabbitmqctl")
    process = await asyncio.create_subprocess_exec(
        command,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{command} {' '.join(args)} failed: {err.decode().strip()}")
    return out.decode()


@asynccontextmanager
async def fresh_vhost() -> AsyncIterator[str]:
    """Creates a vhost the test's user may use, yields its AMQP URL, deletes it afterwards."""
    base = URL(base_url())
    name = f"emporium-test-{uuid.uuid4().hex[:12]}"
    await rabbitmqctl("add_vhost", name)
    await rabbitmqctl("set_permissions", "-p", name, base.user or "guest", ".*", ".*", ".*")
    try:
        yield str(base.with_path("/" + name, encoded=False))
    finally:
        await rabbitmqctl("delete_vhost", name)
