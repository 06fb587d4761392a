"""tools/broker renew on a real broker (fresh vhost): a queue an older kit declared with other
arguments is re-created with today's, its messages kept; the kit then declares it cleanly."""

from __future__ import annotations

import aio_pika
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from libs.messaging.broker import BrokerOptions, connect
from libs.messaging.envelope import ATTEMPT_HEADER, to_amqp
from libs.messaging.topology import Topology, WorkQueue, declare
from tools.commands.broker.operations import renew_queue

WORK = WorkQueue("renew.work", retry_delays=(0.5,))


async def test_renew_recreates_a_queue_with_current_arguments_and_keeps_its_messages(
    amqp_url: str,
) -> None:
    connection = await connect(BrokerOptions(amqp_url))
    try:
        channel = await connection.channel(publisher_confirms=True)
        # As an older kit declared it: a small x-delivery-limit, which a redeclaration refuses.
        await channel.declare_queue(
            WORK.name, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 5}
        )
        for i in range(3):
            outgoing = to_amqp(
                body=StringValue(value=f"m{i}").SerializeToString(),
                message_type=StringValue.DESCRIPTOR.full_name,
                message_id=f"m{i}",
                headers={ATTEMPT_HEADER: 2},
            )
            await channel.default_exchange.publish(outgoing, WORK.name)

        kept = await renew_queue(connection, WORK, WORK.name, replicas=None)

        assert kept == 3
        checking = await connection.channel()
        # Today's declaration is accepted as equivalent: the queue has the new arguments.
        await declare(checking, Topology(work_queues=(WORK,)))
        queue = await checking.declare_queue(WORK.name, passive=True)
        assert queue.declaration_result.message_count == 3
        taken = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            taken.append((message.message_id, message.headers[ATTEMPT_HEADER]))
        assert taken == [("m0", 2), ("m1", 2), ("m2", 2)]
        gone = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await gone.declare_queue(f"{WORK.name}.renewing", passive=True)
    finally:
        await connection.close()
