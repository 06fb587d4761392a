"""What a new user's first hour ran into at the front door, each now answered clearly: shapes
of bad JSON named by field, each violated field named once, an unknown product in an order,
upstream messages as the service wrote them, GraphQL zeros, form-encoded token requests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.testing.front_door import bearer
from services.gateway.tests.fleet import PRODUCTS, Fleet, running_fleet


@pytest.fixture
async def fleet(amqp_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path, amqp_url, payments=False) as started:
        yield started


async def test_a_price_given_as_a_word_names_the_price(fleet: Fleet) -> None:
    staff = await fleet.token("staff")
    async with fleet.client(headers=bearer(staff)) as http:
        answer = await http.post(
            "/v1/products", json={"sku": "TEA-1", "title": "Tea", "price": "free"}
        )
    assert answer.status_code == 400
    assert answer.json()["violations"] == [
        {
            "field": "product.price",
            "description": "must be a JSON object",
            "reason": "INVALID_REQUEST",
        }
    ]


async def test_a_field_breaking_two_rules_is_named_once(fleet: Fleet) -> None:
    staff = await fleet.token("staff")
    async with fleet.client(headers=bearer(staff)) as http:
        answer = await http.post(
            "/v1/products",
            json={"sku": "", "title": "Tea", "price": {"currencyCode": "USD", "units": 1}},
        )
    assert answer.status_code == 400
    problem = answer.json()
    assert [v["field"] for v in problem["violations"]].count("product.sku") == 2
    assert problem["detail"].count("product.sku") == 1, problem["detail"]


async def test_an_order_for_an_unknown_product(fleet: Fleet) -> None:
    token = await fleet.customer("ann")
    async with fleet.client(headers=bearer(token)) as http:
        answer = await http.post(
            "/v1/orders",
            json={
                "customer": "customers/ann",
                "lines": [{"product": "products/no-such-thing", "quantity": 1}],
            },
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    problem = answer.json()
    # FAILED_PRECONDITION (the request is well-formed; the catalog lacks the product), with a
    # reason README.md lists and the line it concerns.
    assert answer.status_code == 400, problem
    assert (problem["code"], problem["reason"]) == ("FAILED_PRECONDITION", "PRODUCT_NOT_FOUND")
    assert problem["violations"][0]["field"] == "order.lines[0].product"
    assert "products/no-such-thing" in problem["violations"][0]["description"]


async def test_an_upstream_message_reaches_the_client_as_written(fleet: Fleet) -> None:
    token = await fleet.customer("ann")
    async with fleet.client(headers=bearer(token)) as http:
        # Nothing is stocked: inventory refuses the reservation orders asks for.
        answer = await http.post(
            "/v1/orders",
            json={"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    problem = answer.json()
    assert (answer.status_code, problem["reason"]) == (400, "INSUFFICIENT_STOCK"), problem
    assert problem["detail"].startswith("inventory/items/"), problem["detail"]  # no "upstream: "


async def test_graphql_writes_zero_as_zero(fleet: Fleet) -> None:
    async with fleet.client() as http:
        answer = await http.post(
            "/graphql",
            json={
                "query": f'{{ getProduct(name: "{PRODUCTS[0]}") {{ price {{ units nanos }} }} }}'
            },
        )
    price = answer.json()["data"]["getProduct"]["price"]
    assert price["nanos"] is not None, price


async def test_graphql_without_a_query_says_how_to_send_one(fleet: Fleet) -> None:
    async with fleet.client() as http:
        bare = await http.get("/graphql")  # curl's Accept: */*
        browser = await http.get("/graphql", headers={"Accept": "text/html"})
    assert bare.status_code == 400
    assert "?query=" in bare.json()["detail"] and "GraphiQL" in bare.json()["detail"]
    assert browser.status_code == 200 and "graphiql.min.js" in browser.text
