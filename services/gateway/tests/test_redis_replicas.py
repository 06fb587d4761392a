"""Two gateway replicas sharing Redis (acceptance 5): one rate limit for the cluster, and one
idempotency record for a key whichever replica a request reaches."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.gateway.tests.fleet import PRODUCTS, Fleet, running_fleet

RATE, BURST = 20.0, 10


@pytest.fixture
async def replicas(
    amqp_url: str, tmp_path: Path, redis_url: str, redis_key_prefix: str
) -> AsyncIterator[Fleet]:
    async with running_fleet(
        tmp_path,
        amqp_url,
        replicas=2,
        redis_url=redis_url,
        redis_key_prefix=redis_key_prefix,
        rate_read_per_second=RATE,
        rate_read_burst=BURST,
        rate_write_burst=1000,
    ) as fleet:
        yield fleet


async def test_two_replicas_hold_one_rate(replicas: Fleet) -> None:
    clients = [replicas.client(0), replicas.client(1)]
    allowed: list[httpx.Response] = []
    refused: list[httpx.Response] = []
    duration = 3.0
    started = time.monotonic()

    async def hammer(client: httpx.AsyncClient) -> None:
        while time.monotonic() - started < duration:
            response = await client.get(f"/v1/{PRODUCTS[0]}")
            (allowed if response.status_code == 200 else refused).append(response)

    await asyncio.gather(*(hammer(clients[i % 2]) for i in range(16)))
    elapsed = time.monotonic() - started
    for client in clients:
        await client.aclose()
    expected = BURST + RATE * elapsed
    assert abs(len(allowed) - expected) <= 0.1 * expected, (len(allowed), expected, len(refused))
    assert len(refused) > len(allowed)  # the load really exceeded the rate
    assert {r.status_code for r in refused} == {429}
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["ratelimit-policy"] == f'"read";q={BURST};w=1'
    assert all("ratelimit" in r.headers for r in allowed)


async def test_one_idempotency_record_across_replicas(replicas: Fleet) -> None:
    await replicas.stock()
    token = await replicas.customer("ann")
    order = {"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]}
    key = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    async with replicas.client(0) as first, replicas.client(1) as second:
        clients = (first, second)
        responses = await asyncio.gather(
            *(clients[i % 2].post("/v1/orders", json=order, headers=headers) for i in range(20))
        )
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 409}, statuses
        names = {r.json()["name"] for r in responses if r.status_code == 200}
        assert len(names) == 1
        replay = await second.post("/v1/orders", json=order, headers=headers)
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["name"] in names
