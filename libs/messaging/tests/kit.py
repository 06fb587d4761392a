"""Small test seams for the messaging kit's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from google.protobuf.wrappers_pb2 import StringValue

from libs.messaging.broker import BrokerOptions
from libs.messaging.envelope import Outgoing
from libs.messaging.publisher import Publisher
from libs.messaging.topology import COMMANDS_EXCHANGE, Topology


def command(queue: str, text: str, message_id: str | None = None) -> Outgoing:
    if message_id is None:
        return Outgoing(COMMANDS_EXCHANGE, queue, StringValue(value=text))
    return Outgoing(COMMANDS_EXCHANGE, queue, StringValue(value=text), message_id=message_id)


@asynccontextmanager
async def publisher(options: BrokerOptions, topology: Topology) -> AsyncIterator[Publisher]:
    started = Publisher(options, topology)
    await started.start()
    try:
        yield started
    finally:
        await started.close()
