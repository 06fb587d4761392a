"""REST through the gateway to the real fleet: the new user's path (acceptance 1 in-process),
transcoding, pagination, conditional GETs, idempotency keys, SSE, problem+json."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from libs.telemetry.logging import JsonFormatter
from libs.testing.front_door import bearer
from services.gateway.tests.fleet import PRODUCTS, Fleet, running_fleet, sse_messages


@pytest.fixture
async def fleet(amqp_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path, amqp_url) as started:
        await started.stock()
        yield started


async def test_a_new_customer_orders_and_watches_it_confirm(fleet: Fleet) -> None:
    token = await fleet.customer("ann")
    async with fleet.client(headers=bearer(token)) as http:
        order = {
            "customer": "customers/ann",
            "lines": [
                {"product": PRODUCTS[0], "quantity": 2},
                {"product": PRODUCTS[1], "quantity": 1},
            ],
        }
        key = str(uuid.uuid4())
        created = await http.post("/v1/orders", json=order, headers={"Idempotency-Key": key})
        assert created.status_code == 200, created.text
        name = created.json()["name"]
        states = await fleet.settled(http, name)
        assert states[0] == "ORDER_STATE_PENDING_PAYMENT"
        assert states[-1] == "ORDER_STATE_CONFIRMED"
        full = await http.get(f"/v1/{name}", params={"view": "FULL"})
        assert full.status_code == 200
        lines = full.json()["lines"]
        assert [line["productDetails"]["name"] for line in lines] == PRODUCTS[:2]
        assert "warnings" not in full.json()
        replay = await http.post("/v1/orders", json=order, headers={"Idempotency-Key": key})
        assert replay.json() == created.json()
        assert replay.headers["idempotent-replayed"] == "true"


async def test_products_page_by_page_with_link_headers(fleet: Fleet) -> None:
    seen: list[str] = []
    async with fleet.client() as http:
        url: str | None = "/v1/products?page_size=2&order_by=price"
        pages = 0
        while url:
            page = await http.get(url)
            assert page.status_code == 200
            seen += [p["name"] for p in page.json().get("products", [])]
            pages += 1
            link = page.headers.get("link")
            url = link.split(">")[0].removeprefix("<") if link else None
    assert sorted(seen) == sorted(PRODUCTS)
    assert pages == (len(PRODUCTS) + 1) // 2


async def test_conditional_get_and_cache_invalidated_by_a_change(fleet: Fleet) -> None:
    staff = await fleet.token("staff")
    async with fleet.client() as http:
        first = await http.get(f"/v1/{PRODUCTS[0]}")
        etag = first.headers["etag"]
        assert first.headers["cache-control"].startswith("public, max-age=")
        again = await http.get(f"/v1/{PRODUCTS[0]}", headers={"If-None-Match": etag})
        assert again.status_code == 304
        changed = await http.patch(
            f"/v1/{PRODUCTS[0]}",
            params={"update_mask": "title"},
            json={"title": "Renamed"},
            headers=bearer(staff),
        )
        assert changed.status_code == 200, changed.text

        async def fresh() -> httpx.Response:
            while True:  # the feed invalidates asynchronously; poll until it has
                response = await http.get(f"/v1/{PRODUCTS[0]}", headers={"If-None-Match": etag})
                if response.status_code == 200:
                    return response
                await asyncio.sleep(0.02)

        response = await asyncio.wait_for(fresh(), 5)
        assert response.json()["title"] == "Renamed"
        assert fleet.gateways[0].cache.invalidations >= 2


async def test_bad_input_is_problem_json_with_violations(fleet: Fleet) -> None:
    token = await fleet.customer("bob")
    async with fleet.client(headers=bearer(token)) as http:
        bad = await http.post(
            "/v1/orders",
            json={"customer": "customers/bob", "lines": []},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"
        problem = bad.json()
        assert problem["status"] == 400 and problem["code"] == "INVALID_ARGUMENT"
        assert "order.lines" in [v["field"] for v in problem["violations"]]
        assert {"type", "title", "detail", "instance"} <= problem.keys()
        not_json = await http.post(
            "/v1/orders", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 400
        missing = await http.get("/v1/products/nope")
        assert missing.status_code == 404 and missing.json()["reason"]
        unknown = await http.get("/v1/nothing-here")
        assert unknown.status_code == 404
        wrong_verb = await http.delete("/v1/orders")
        assert wrong_verb.status_code == 405 and "POST" in wrong_verb.headers["allow"]
        # and the gateway keeps serving
        assert (await http.get("/v1/products")).status_code == 200


async def test_body_limit(amqp_url: str, tmp_path: Path) -> None:
    async with running_fleet(tmp_path, amqp_url, payments=False, max_body_bytes=2048) as fleet:
        token = await fleet.customer("cyd")
        async with fleet.client(headers=bearer(token)) as http:
            big = await http.post("/v1/orders", json={"customer": "x" * 5000})
    assert big.status_code == 413
    assert big.json()["reason"] == "BODY_TOO_LARGE"


async def test_jwks_openapi_docs_and_request_ids(fleet: Fleet) -> None:
    async with fleet.client() as http:
        jwks = await http.get("/.well-known/jwks.json")
        assert jwks.json()["keys"][0]["kty"] == "OKP"
        spec = (await http.get("/openapi.json")).json()
        assert spec["openapi"] == "3.1.0"
        assert "/v1/orders/{order}" in spec["paths"]
        docs = await http.get("/docs")
        assert "/openapi.json" in docs.text  # Swagger UI, from assets the gateway serves
        assert (await http.get("/docs/assets/swagger-ui-bundle.js")).status_code == 200
        echoed = await http.get("/v1/products", headers={"X-Request-ID": "abc-123"})
        assert echoed.headers["x-request-id"] == "abc-123"
        assert len((await http.get("/v1/products")).headers["x-request-id"]) >= 16


async def test_v1_and_v2_side_by_side(fleet: Fleet) -> None:
    async with fleet.client() as http:
        v1 = (await http.get(f"/v1/{PRODUCTS[0]}")).json()
        v2 = (await http.get(f"/v2/{PRODUCTS[0]}")).json()
        v2_page = await http.get("/v2/products", params={"page_size": 2})
        spec = (await http.get("/openapi.json")).json()
    assert v1["name"] == v2["name"] and v1["etag"] == v2["etag"]
    assert set(v1["price"]) <= {"currencyCode", "units", "nanos"}
    units, nanos = int(v1["price"].get("units", "0")), v1["price"].get("nanos", 0)
    assert v2["price"] == {
        "amount": f"{units}.{f'{nanos:09d}'.rstrip('0').ljust(2, '0')}",
        "currency": v1["price"]["currencyCode"],
    }
    assert len(v2_page.json()["products"]) == 2 and 'rel="next"' in v2_page.headers["link"]
    assert {"/v1/products/{product}", "/v2/products/{product}"} <= spec["paths"].keys()


async def test_full_view_degrades_with_a_warning(fleet: Fleet) -> None:
    token = await fleet.customer("ann")
    staff = await fleet.token("staff")
    async with fleet.client(headers=bearer(token)) as http:
        created = await http.post(
            "/v1/orders",
            json={
                "customer": "customers/ann",
                "lines": [
                    {"product": PRODUCTS[0], "quantity": 1},
                    {"product": PRODUCTS[1], "quantity": 1},
                ],
            },
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        name = created.json()["name"]
        deleted = await http.delete(f"/v1/{PRODUCTS[1]}", headers=bearer(staff))
        assert deleted.status_code == 200, deleted.text
        full = await http.get(f"/v1/{name}", params={"view": "FULL"})
    assert full.status_code == 200
    document = full.json()
    assert document["lines"][0]["productDetails"]["name"] == PRODUCTS[0]
    assert "productDetails" not in document["lines"][1]
    assert document["warnings"] == [
        {
            "field": "lines[1].product",
            "resource": PRODUCTS[1],
            "status": 404,
            "reason": document["warnings"][0]["reason"],
            "detail": document["warnings"][0]["detail"],
        }
    ]
    assert document["warnings"][0]["reason"]


async def test_product_changes_arrive_over_sse(fleet: Fleet) -> None:
    staff = await fleet.token("staff")
    async with fleet.client() as http, http.stream("GET", "/v1/products:watch") as stream:
        assert stream.status_code == 200
        changed = await http.patch(
            f"/v1/{PRODUCTS[2]}",
            params={"update_mask": "title"},
            json={"title": "Seen over SSE"},
            headers=bearer(staff),
        )
        assert changed.status_code == 200
        async for event, data in sse_messages(stream):
            assert event == "message"
            assert data["changeType"] == "CHANGE_TYPE_UPDATED"
            assert data["product"]["title"] == "Seen over SSE"
            break


class _Lines(logging.Handler):
    """Formats each record where it is logged, as the service's JSON handler does."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("gateway"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_access_log_line_and_trace_propagation(fleet: Fleet) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    token = await fleet.customer("dee")
    collected = _Lines()
    access = logging.getLogger("emporium.gateway.access")
    access.addHandler(collected)
    access.setLevel(logging.INFO)
    try:
        async with fleet.client() as http:
            response = await http.get(
                "/v1/orders",
                params={"customer": "customers/dee"},
                headers={"traceparent": traceparent, "X-Request-ID": "req-42", **bearer(token)},
            )
    finally:
        access.removeHandler(collected)
    assert response.status_code == 200
    line = next(entry for entry in collected.lines if entry.get("route") == "/v1/orders")
    assert line["http_method"] == "GET" and line["status"] == 200
    assert line["principal"] == "users/dee"
    assert float(str(line["latency_ms"])) > 0
    assert line["trace_id"] == trace_id  # the caller's trace continues
    assert line["request_id"] == "req-42"
    assert response.headers["x-request-id"] == "req-42"


async def test_an_unreachable_upstream_is_503_and_then_a_fast_open_circuit(
    amqp_url: str, tmp_path: Path
) -> None:
    async with running_fleet(
        tmp_path, amqp_url, payments=False, upstream_breaker_cooldown_seconds=30
    ) as fleet:
        staff = await fleet.token("staff")
        reasons = []
        async with fleet.client(headers=bearer(staff)) as http:
            for _ in range(40):
                response = await http.get("/v1/payments")
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
                assert int(response.headers["retry-after"]) >= 1
                reasons.append(response.json().get("reason"))
                if reasons[-1] == "CIRCUIT_OPEN":
                    break
    assert reasons[-1] == "CIRCUIT_OPEN", reasons
    assert int(response.headers["retry-after"]) > 1  # the breaker's cool-down, not a guess
