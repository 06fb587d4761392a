"""Acceptance 6 of the order saga: on a three-node RabbitMQ cluster (private nodes on this
machine, clustered; quorum queues and streams replicated on all three; the services given all
three addresses), the node that leads `payments.charge` is killed while orders are in flight.
Nothing is lost: every order is confirmed through the other nodes, the audit balances, and the
dead-letter queues stay empty. On SQLite and on PostgreSQL. One cluster for the module
(starting nodes takes seconds), a virtual host per test, and the killed node started again
after each test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from emporium.orders.v1 import orders_service_pb2 as pb
from libs.messaging.broker import BrokerOptions, connect
from libs.messaging.contract import fleet_contract
from libs.messaging.local_broker import LocalCluster
from libs.testing.broker import running_cluster
from tests.saga.shop import running_shop

RESULTS_QUEUE = fleet_contract().topology("orders").work_queues[0]
CHARGE_QUEUE = fleet_contract().topology("payments").work_queues[0].name
EVENTS_STREAM = fleet_contract().topology("payments").streams[0].name

ORDERS = 40
REPLICATED = {"amqp_replicas": 3}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


async def depth(url: str, queue: str) -> int:
    connection = await connect(BrokerOptions(url))
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def test_losing_the_node_that_leads_payments_charge_loses_no_order(
    cluster: LocalCluster, database_url: str, tmp_path: Path
) -> None:
    vhost = f"saga-{uuid.uuid4().hex[:8]}"
    amqp_url = await cluster.add_vhost(vhost)
    try:
        await order_flow_loses_no_order(cluster, vhost, amqp_url, database_url, tmp_path)
    finally:
        for node in cluster.nodes:
            if not node.running:
                await node.start()  # it rejoins the cluster from its data directory


async def order_flow_loses_no_order(
    cluster: LocalCluster, vhost: str, amqp_url: str, database_url: str, tmp_path: Path
) -> None:
    async with running_shop(
        database_url,
        amqp_url,
        tmp_path,
        units=1000,
        orders=REPLICATED,
        payments={**REPLICATED, "provider_latency_seconds": 0.05},
    ) as shop:
        every_node = sorted(node.node for node in cluster.nodes)
        for queue in (CHARGE_QUEUE, RESULTS_QUEUE.name, EVENTS_STREAM, "orders.events"):
            assert await cluster.members(queue, vhost) == every_node, queue
        leader = await cluster.leader(CHARGE_QUEUE, vhost)

        first = await asyncio.gather(*(shop.place() for _ in range(ORDERS // 2)))
        await leader.kill()  # while the first half is on its way through the saga
        second = await asyncio.gather(*(shop.place() for _ in range(ORDERS // 2)))
        finals = await asyncio.wait_for(
            asyncio.gather(*(shop.final_state(o.name) for o in first + second)), 120
        )
        report = await shop.settled_audit(within=60)
        dead = {
            queue: await depth(amqp_url, f"{queue}.dlq")
            for queue in (CHARGE_QUEUE, RESULTS_QUEUE.name)
        }
        new_leader = await cluster.leader(CHARGE_QUEUE, vhost)

    assert report.ok, report.text()
    assert [o.state for o in finals] == [pb.ORDER_STATE_CONFIRMED] * ORDERS
    assert report.orders["CONFIRMED"] == ORDERS
    assert dead == {CHARGE_QUEUE: 0, RESULTS_QUEUE.name: 0}
    assert new_leader is not leader and new_leader.running
