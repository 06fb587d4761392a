"""The fleet's metrics (issue 15, acceptance 1 and 3): the fleet as tools/run starts it, with a
metrics endpoint per service; orders placed through the gateway; every service scraped. The
RED histogram carries the method and the status code, the messaging counters count the charge
and the payment results, the outbox backlog gauge is there, the order counters moved by what
was placed, and every metric the dashboard and the alert rules name is really exported."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.messaging.contract import fleet_contract
from libs.runtime.processes import ServiceProcess
from libs.testing.front_door import password_token, staff_stocks
from tools.commands.run.fleet import metrics_address, running_processes
from tools.monitoring.definition import exported_names_used

RESULTS_QUEUE = fleet_contract().topology("orders").work_queues[0]
CHARGE_QUEUE = fleet_contract().topology("payments").work_queues[0].name

CONFIRMED_ORDERS = 2
PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(address: str) -> list[Sample]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def scrape_until(
    address: str, holds: Callable[[list[Sample]], bool], within: float = 15.0
) -> list[Sample]:
    """Scrapes until `holds` (a pull endpoint has nothing to await: Prometheus polls too)."""
    deadline = time.monotonic() + within
    while True:
        samples = await asyncio.to_thread(scrape, address)
        if holds(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)


@pytest.fixture
async def fleet(tmp_path: Path, amqp_url: str) -> AsyncIterator[dict[str, ServiceProcess]]:
    async with running_processes(tmp_path, amqp_url) as running:
        yield running


async def place_and_watch(client: httpx.AsyncClient, bearer: str, payment_method: str) -> str:
    """Places an order and follows it over SSE to its end; returns its last state."""
    order = {"customer": "customers/ann", "lines": [{"product": "products/mug-01", "quantity": 1}]}
    if payment_method:
        order["paymentMethod"] = payment_method
    headers = {"Authorization": f"Bearer {bearer}", "Idempotency-Key": str(uuid.uuid4())}
    created = await client.post("/v1/orders", json=order, headers=headers)
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    state = ""
    watch = f"/v1/{name}:watch"
    async with client.stream("GET", watch, headers={"Authorization": f"Bearer {bearer}"}) as sse:
        async for line in sse.aiter_lines():
            if line.startswith("data: "):
                state = json.loads(line.removeprefix("data: ")).get("state", state)
    return state


async def test_the_fleet_exports_red_messaging_outbox_and_order_metrics(
    fleet: dict[str, ServiceProcess], tmp_path: Path
) -> None:
    addresses = {name: metrics_address(process) for name, process in fleet.items()}
    assert all(addresses.values()), addresses
    metrics = {name: str(address) for name, address in addresses.items()}

    async with httpx.AsyncClient(
        base_url=f"http://{fleet['gateway'].address}", timeout=30
    ) as client:
        await staff_stocks(client, tmp_path, "inventory/items/mug-01", 10)
        signed_up = await client.post("/v1/users?user_id=ann", json={"password": PASSWORD})
        assert signed_up.status_code == 200, signed_up.text
        ann = await password_token(client, "ann", PASSWORD)
        before = await asyncio.to_thread(scrape, metrics["orders"])
        states = [await place_and_watch(client, ann, "") for _ in range(CONFIRMED_ORDERS)]
        states.append(await place_and_watch(client, ann, "cards/declined"))
        missing = await client.get("/v1/products/no-such-product")
        assert missing.status_code == 404

    assert states == ["ORDER_STATE_CONFIRMED"] * CONFIRMED_ORDERS + ["ORDER_STATE_CANCELLED"]
    placed = CONFIRMED_ORDERS + 1

    def moved(samples: list[Sample], counter: str) -> float:
        return total(samples, counter) - total(before, counter)

    orders = await scrape_until(
        metrics["orders"],
        lambda s: (
            moved(s, "emporium_orders_confirmed_total") >= CONFIRMED_ORDERS
            and moved(s, "emporium_orders_cancelled_total") >= 1
        ),
    )
    assert moved(orders, "emporium_orders_placed_total") == placed
    assert moved(orders, "emporium_orders_confirmed_total") == CONFIRMED_ORDERS
    assert moved(orders, "emporium_orders_cancelled_total") == 1

    # RED: rpc.server.duration by method and status code, as Prometheus names it.
    create = total(
        orders,
        "rpc_server_duration_milliseconds_count",
        rpc_service="emporium.orders.v1.OrdersService",
        rpc_method="CreateOrder",
        rpc_grpc_status_code="0",
        service_name="orders",
    )
    assert create == placed
    catalog = await asyncio.to_thread(scrape, metrics["catalog"])
    not_found = total(
        catalog,
        "rpc_server_duration_milliseconds_count",
        rpc_method="GetProduct",
        rpc_grpc_status_code="5",
    )
    assert not_found >= 1

    # The charge: sent and confirmed by orders' outbox, consumed by payments.
    charge = {"messaging_destination_name": CHARGE_QUEUE}
    sent = total(orders, "messaging_client_sent_messages_total", **charge)
    assert sent >= placed
    assert total(orders, "messaging_client_confirmed_messages_total", **charge) == sent
    payments = await scrape_until(
        metrics["payments"],
        lambda s: total(s, "messaging_client_consumed_messages_total", **charge) >= sent,
    )
    assert total(payments, "messaging_client_consumed_messages_total", **charge) >= sent
    assert total(payments, "emporium_payments_declined_total") >= 1
    # The payment results: published by payments, consumed by orders.
    results = {"messaging_destination_name": RESULTS_QUEUE.name}
    assert total(orders, "messaging_client_consumed_messages_total", **results) >= placed
    assert total(payments, "messaging_client_confirmed_messages_total") >= placed
    # The outbox backlog gauge, and its age, from each service with an outbox.
    for samples in (orders, payments):
        assert any(s.name == "messaging_outbox_backlog" for s in samples)
        assert any(s.name == "messaging_outbox_oldest_unsent_age_seconds" for s in samples)

    gateway = await asyncio.to_thread(scrape, metrics["gateway"])
    assert (
        total(
            gateway,
            "http_server_request_duration_seconds_count",
            http_request_method="POST",
            http_response_status_code="200",
            http_route="/v1/orders",
        )
        == placed
    )

    # Acceptance 3: every metric the dashboard and the rules read is exported by the fleet.
    everything = {
        s.name for address in metrics.values() for s in await asyncio.to_thread(scrape, address)
    }
    assert exported_names_used() - everything == set()
