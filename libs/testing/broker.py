"""Fresh RabbitMQ virtual hosts for tests, so suites sharing one broker never see each
other's queues. The broker is EMPORIUM_TEST_AMQP_URL (tools/setup makes one reachable);
vhosts are made with rabbitmqctl on the same machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from google.protobuf.message import Message
from yarl import URL

from libs.messaging.broker import DEFAULT_AMQP_URL, BrokerOptions, connect_next
from libs.messaging.envelope import decode
from libs.messaging.local_broker import LocalCluster
from libs.messaging.topology import EVENTS_EXCHANGE, Topology, declare

M = TypeVar("M", bound=Message)


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


@contextlib.contextmanager
def running_cluster(directory: Path, size: int = 3) -> Iterator[LocalCluster]:
    """A private cluster of `size` nodes for a module of tests (starting nodes takes seconds),
    stopped and removed afterwards. Synchronous, each step on its own event loop, because a
    module fixture outlives every test's loop."""
    nodes = LocalCluster(directory, size=size)
    try:
        asyncio.run(nodes.start())
        yield nodes
    finally:
        asyncio.run(nodes.stop())
        nodes.remove()


class EventTap:
    """Listens to the events exchange like a subscriber would: a private queue bound to
    `routing_keys`. Tests await the events a system publishes instead of polling for them."""

    def __init__(self, url: str, *routing_keys: str) -> None:
        self._options = BrokerOptions(url, reconnect_interval=0.2)
        self._keys = routing_keys
        self.events: list[AbstractIncomingMessage] = []
        self._arrived = asyncio.Condition()
        self._connection: AbstractConnection | None = None
        self._node = -1
        self._lost = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventTap:
        await self._listen()
        self._keeper = asyncio.create_task(self._keep_listening())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._connection is not None:
            await self._connection.close()

    async def _listen(self) -> None:
        self._connection, self._node = await connect_next(self._options, self._node)
        self._lost.clear()
        self._connection.close_callbacks.add(lambda *_: self._lost.set())
        channel = await self._connection.channel()
        await declare(channel, Topology())
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in self._keys:
            await queue.bind(EVENTS_EXCHANGE, routing_key=key)
        await queue.consume(self._on_message, no_ack=True)

    async def _keep_listening(self) -> None:
        """After losing its node (a cluster test stops one), listens again through another;
        the events published in between are missed."""
        while True:
            await self._lost.wait()
            while True:
                try:
                    await self._listen()
                    break
                except Exception:  # the tap keeps trying while the test runs
                    await asyncio.sleep(self._options.reconnect_interval)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        async with self._arrived:
            self.events.append(message)
            self._arrived.notify_all()

    async def wait_for(self, predicate: Callable[[list[AbstractIncomingMessage]], bool]) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.events))

    def bodies(self, message_type: type[M]) -> list[M]:
        name = message_type.DESCRIPTOR.full_name
        return [decode(m, message_type) for m in self.events if m.type == name]
