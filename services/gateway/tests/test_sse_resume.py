"""Server-Sent Events resume where they broke off: each event's `id:` is the catalog revision
or the order's version, and a reconnect with `Last-Event-ID` loses and repeats nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.gateway.tests.fleet import PRODUCTS, Fleet, running_fleet, serve_gateway


@pytest.fixture
async def fleet(amqp_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    # No payments: an order stays PENDING_PAYMENT until it is cancelled, so the test decides
    # when it changes.
    async with running_fleet(tmp_path, amqp_url, payments=False) as started:
        await started.stock()
        yield started


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, str, Any]]:
    """(id, event, data as text) for each event of an SSE response."""
    event_id, event, data = "", "message", ""
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            event_id = line.removeprefix("id: ")
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield event_id, event, data
            event_id, event, data = "", "message", ""


async def read(
    http: httpx.AsyncClient, path: str, count: int | None, **headers: str
) -> list[tuple[str, str]]:
    """(id, event) of the first `count` messages (or all, to the end), then disconnects."""
    seen: list[tuple[str, str]] = []
    async with http.stream("GET", path, headers=headers) as stream:
        assert stream.status_code == 200, await stream.aread()
        async for event_id, event, data in events(stream):
            if event == "end":
                break
            assert event == "message", data
            seen.append((event_id, data))
            if count is not None and len(seen) == count:
                break  # a forced disconnect, mid-stream
    return seen


async def test_the_catalog_feed_resumes_after_the_last_revision(fleet: Fleet) -> None:
    staff = await fleet.token("staff")
    watch = "/v1/products:watch?after_revision=0"
    async with fleet.client() as http:
        history = len(PRODUCTS)
        before = await read(http, watch, 2)
        assert [event_id for event_id, _ in before] == ["1", "2"]
        # A change while the client is away.
        changed = await http.patch(
            f"/v1/{PRODUCTS[0]}",
            params={"update_mask": "title"},
            json={"title": "Renamed while away"},
            headers={"Authorization": f"Bearer {staff}"},
        )
        assert changed.status_code == 200, changed.text
        after = await read(http, watch, history - 1, **{"Last-Event-ID": before[-1][0]})
    ids = [int(event_id) for event_id, _ in before + after]
    assert ids == list(range(1, history + 2))  # nothing lost, nothing repeated
    assert "Renamed while away" in after[-1][1]


async def test_an_order_watch_resumes_after_the_version_it_saw(fleet: Fleet) -> None:
    token = await fleet.customer("ann")
    async with fleet.client(headers={"Authorization": f"Bearer {token}"}) as http:
        created = await http.post(
            "/v1/orders",
            json={"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert created.status_code == 200, created.text
        order = created.json()
        watch = f"/v1/{order['name']}:watch"
        before = await read(http, watch, 1)
        assert before[0][0] == order["etag"]  # the id is the order's version
        assert "ORDER_STATE_PENDING_PAYMENT" in before[0][1]
        # Reconnect while the order is unchanged, and change it (whichever comes first): the
        # snapshot the client had is not sent again, the change is.
        resumed = asyncio.create_task(read(http, watch, 1, **{"Last-Event-ID": before[0][0]}))
        cancelled = await http.post(f"/v1/{order['name']}:cancel", json={})
        assert cancelled.status_code == 200, cancelled.text
        after = await resumed
    assert [event_id for event_id, _ in after] == [cancelled.json()["etag"]]
    assert json.loads(after[0][1])["state"] == cancelled.json()["state"]


async def test_an_order_watch_replays_every_version_missed_while_away(
    amqp_url: str, tmp_path: Path
) -> None:
    """With payments, the order moves PENDING_PAYMENT -> AUTHORIZED -> CONFIRMED while the
    client is away: the reconnect gets each missed version once, in order."""
    async with running_fleet(tmp_path, amqp_url) as paying:
        await paying.stock()
        token = await paying.customer("ann")
        async with paying.client(headers={"Authorization": f"Bearer {token}"}) as http:
            created = await http.post(
                "/v1/orders",
                json={
                    "customer": "customers/ann",
                    "lines": [{"product": PRODUCTS[0], "quantity": 1}],
                },
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            assert created.status_code == 200, created.text
            watch = f"/v1/{created.json()['name']}:watch"
            before = await read(http, watch, 1)  # then away
            whole = await read(http, watch + "?after_etag=0", None)  # to its terminal state
            after = await read(http, watch, None, **{"Last-Event-ID": before[0][0]})
    states = [json.loads(data)["state"] for _, data in whole]
    assert states[:3] == [
        "ORDER_STATE_PENDING_PAYMENT",
        "ORDER_STATE_AUTHORIZED",
        "ORDER_STATE_CONFIRMED",
    ]
    ids = [int(event_id) for event_id, _ in before + after]
    assert ids == list(range(1, len(ids) + 1))  # nothing lost, nothing repeated
    assert len(ids) >= 3 and json.loads(after[-1][1])["state"] == "ORDER_STATE_CONFIRMED"


async def test_a_bad_last_event_id_is_a_problem(fleet: Fleet) -> None:
    async with fleet.client() as http:
        refused = await http.get("/v1/products:watch", headers={"Last-Event-ID": "yesterday"})
    assert refused.status_code == 400
    assert refused.json()["reason"] == "INVALID_LAST_EVENT_ID"


async def test_a_gateway_shutting_down_ends_its_event_streams_with_a_resume_hint(
    fleet: Fleet,
) -> None:
    """When a gateway stops, an open stream gets SHUTTING_DOWN (reconnect with Last-Event-ID)
    instead of holding the drain for the whole grace period."""
    seen: list[tuple[str, str]] = []
    opened = asyncio.Event()

    async def watch(url: str) -> None:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as http,
            http.stream("GET", "/v1/products:watch?after_revision=0") as stream,
        ):
            async for _id, event, data in events(stream):
                seen.append((event, data))
                opened.set()
                if event == "error":
                    return

    async with asyncio.timeout(60):  # the old gateway waited for the stream forever
        async with serve_gateway(fleet.gateways[0].settings) as (_gateway, url):
            watching = asyncio.create_task(watch(url))
            await opened.wait()
        # Leaving the block shut the gateway down, as SIGTERM does.
        await watching
    last_event, last_data = seen[-1]
    assert last_event == "error"
    assert json.loads(last_data)["reason"] == "SHUTTING_DOWN"
    assert {event for event, _ in seen[:-1]} == {"message"}
