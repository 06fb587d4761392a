"""The services' messaging, started on a fresh vhost, declares exactly the topology the
messaging contract describes: the broker's own view (rabbitmqctl) is diffed with the queues,
streams, exchanges and bindings derived from `proto/emporium/*/v1/*.proto`."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from yarl import URL

from libs.messaging.contract import fleet_contract
from libs.messaging.topology import (
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    POISON_DELIVERY_LIMIT,
    Topology,
)
from libs.rpcclient.discovery import LocalRegistry
from libs.testing.broker import rabbitmqctl
from libs.testing.databases import sqlite_url
from libs.testing.rpc import serving
from services.notifications.app import wire as wire_notifications
from services.notifications.config import NotificationsSettings
from services.orders.app import build as build_orders
from services.orders.config import OrdersSettings
from services.payments.app import build as build_payments
from services.payments.config import PaymentsSettings

Queues = dict[str, dict[str, Any]]  # name -> type and the arguments that shape it
Bindings = set[tuple[str, str, str]]  # (exchange, queue, routing key)


def expected(topology: Topology) -> tuple[Queues, Bindings]:
    queues: Queues = {}
    bindings: Bindings = set()
    for work in topology.all_work_queues():
        queues[work.name] = {
            "type": "quorum",
            "x-delivery-limit": POISON_DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": work.name,
        }
        queues[work.dead_letter_queue] = {"type": "quorum"}
        bindings.add((DEAD_LETTER_EXCHANGE, work.dead_letter_queue, work.name))
        bindings.update((exchange, work.name, key) for exchange, key in work.bindings)
        for delay in work.retry_delays:
            queues[work.retry_queue_for(delay)] = {
                "type": "quorum",
                "x-message-ttl": round(delay * 1000),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": work.name,
            }
    for stream in topology.all_streams():
        queues[stream.name] = {"type": "stream", "x-max-age": stream.max_age}
        bindings.update((EVENTS_EXCHANGE, stream.name, key) for key in stream.routing_keys)
    return queues, bindings


async def broker_view(vhost: str) -> tuple[Queues, Bindings, dict[str, str]]:
    listed = json.loads(
        await rabbitmqctl(
            "list_queues", "-p", vhost, "name", "type", "arguments", "--formatter", "json"
        )
    )
    queues: Queues = {}
    for queue in listed:
        arguments = {name: value for name, _, value in queue["arguments"]}
        shape = {"type": queue["type"]}
        for argument in (
            "x-delivery-limit",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-message-ttl",
            "x-max-age",
        ):
            if argument in arguments:
                shape[argument] = arguments[argument]
        queues[queue["name"]] = shape
    bound = json.loads(
        await rabbitmqctl(
            "list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key",
            "--formatter", "json",
        )
    )  # fmt: skip
    # The default exchange binds every queue to its own name: not part of the topology.
    bindings = {
        (b["source_name"], b["destination_name"], b["routing_key"])
        for b in bound
        if b["source_name"]
    }
    exchanges = {
        e["name"]: e["type"]
        for e in json.loads(
            await rabbitmqctl("list_exchanges", "-p", vhost, "name", "type", "--formatter", "json")
        )
        if e["name"] and not e["name"].startswith("amq.")
    }
    return queues, bindings, exchanges


async def test_the_broker_holds_the_topology_the_contract_derives(
    amqp_url: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        # Orders' upstreams are only named here: nothing in this test calls them.
        registry = LocalRegistry(tmp_path / "registry.json")
        registry.register("catalog", "127.0.0.1:9")
        registry.register("inventory", "127.0.0.1:9")
        payments = await build_payments(
            PaymentsSettings(
                database_url=sqlite_url(tmp_path / "payments"),
                amqp_url=amqp_url,
                provider_ledger=tmp_path / "ledger.sqlite3",
                check_orders=False,
            )
        )
        await stack.enter_async_context(serving(payments))
        orders = await build_orders(
            OrdersSettings(
                database_url=sqlite_url(tmp_path / "orders"),
                amqp_url=amqp_url,
                registry_file=registry.path,
            )
        )
        await stack.enter_async_context(serving(orders))
        notifications = await wire_notifications(
            NotificationsSettings(
                database_url=sqlite_url(tmp_path / "notifications"),
                amqp_url=amqp_url,
                maildir=tmp_path / "mail",
            )
        )
        await stack.enter_async_context(serving(notifications.app))
        # Reading the stream proves its producer declared it before this reader needed it.
        await notifications.consumer.consuming.wait()

        queues, bindings, exchanges = await broker_view(URL(amqp_url).path.lstrip("/"))

    want_queues, want_bindings = expected(fleet_contract().fleet_topology())
    assert queues == want_queues
    assert bindings == want_bindings
    assert exchanges == {EVENTS_EXCHANGE: "topic", DEAD_LETTER_EXCHANGE: "direct"}
    # The contract's routes are the ones the broker holds: every command's queue and every
    # event's bound queues exist, with the event's routing key.
    for route in fleet_contract().routes:
        if route.kind == "command":
            assert route.destination in queues
        for queue in route.queues:
            assert (EVENTS_EXCHANGE, queue, route.routing_key) in bindings
