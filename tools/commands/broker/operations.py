"""Queue operations the broker CLI runs (and tests call): a queue's depth, moving messages
between queues with confirms, and renewing a queue declared with older arguments."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

from libs.messaging.envelope import copy_of
from libs.messaging.topology import Topology, WorkQueue, declare


class CliError(Exception):
    """Printed as `error: ...`; exit status 2."""


async def queue_depth(connection: AbstractConnection, name: str) -> tuple[int, int] | None:
    """(messages, consumers), or None if the queue does not exist."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return None
    result = queue.declaration_result
    await channel.close()
    return int(result.message_count or 0), int(result.consumer_count or 0)


async def renew_queue(
    connection: AbstractConnection, work: WorkQueue, name: str, *, replicas: int | None
) -> int:
    """Re-creates `name` (`work`'s queue, DLQ or a retry queue) with the arguments the kit
    declares today: its messages wait in `<name>.renewing` meanwhile. Publishes to it in
    between are refused as unroutable (outboxes retry them). Run again after an interruption:
    messages left in `<name>.renewing` are moved back too."""
    depth = await queue_depth(connection, name)
    if depth is None:
        raise CliError(f"no queue {name!r} on this broker")
    if depth[1]:
        raise CliError(f"{name} has {depth[1]} consumer(s); stop them first")
    holding = f"{name}.renewing"
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.declare_queue(holding, durable=True, arguments={"x-queue-type": "quorum"})
    print(f"moving {depth[0]} message(s) from {name} to {holding} ...", flush=True)
    await move_messages(channel, name, holding)
    # Quorum queues ignore if-empty: check just before deleting.
    if (await queue_depth(connection, name) or (0, 0))[0]:
        raise CliError(f"{name} received messages meanwhile; nothing lost, run renew again")
    await channel.queue_delete(name)
    await declare(channel, Topology(work_queues=(work,)), replicas=replicas)
    moved = await move_messages(channel, holding, name)
    await channel.queue_delete(holding)
    return moved


async def move_messages(channel: AbstractChannel, source_name: str, target: str) -> int:
    """Moves every message, each acknowledged only once the broker confirmed its copy."""
    source = await channel.get_queue(source_name, ensure=False)
    moved = 0
    while (message := await source.get(no_ack=False, fail=False)) is not None:
        copy = copy_of(
            message, {k: v for k, v in message.headers.items() if k != "x-delivery-count"}
        )
        copy.content_type = message.content_type
        await channel.default_exchange.publish(copy, target, mandatory=True)
        await message.ack()
        moved += 1
    return moved
