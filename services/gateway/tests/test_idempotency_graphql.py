"""Idempotency keys under concurrency (acceptance 6) and GraphQL against REST (acceptance 7)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.gateway.tests.fleet import PRODUCTS, Fleet, running_fleet


@pytest.fixture
async def fleet(amqp_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path, amqp_url, rate_write_burst=1000) as started:
        await started.stock()
        yield started


async def test_fifty_concurrent_posts_with_one_key_create_one_order(fleet: Fleet) -> None:
    token = await fleet.customer("ann")
    order = {"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]}
    key = str(uuid.uuid4())
    async with fleet.client(headers={"Authorization": f"Bearer {token}"}) as http:
        responses = await asyncio.gather(
            *(
                http.post("/v1/orders", json=order, headers={"Idempotency-Key": key})
                for _ in range(50)
            )
        )
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 409}, statuses
        names = {r.json()["name"] for r in responses if r.status_code == 200}
        assert len(names) == 1
        listed = await http.get("/v1/orders", params={"customer": "customers/ann"})
        assert [o["name"] for o in listed.json()["orders"]] == list(names)
        # in progress → 409 with Retry-After; afterwards the same request replays
        for conflict in (r for r in responses if r.status_code == 409):
            assert conflict.json()["reason"] == "IDEMPOTENCY_KEY_IN_USE"
            assert conflict.headers["retry-after"]
        again = await http.post("/v1/orders", json=order, headers={"Idempotency-Key": key})
        assert again.status_code == 200 and again.json()["name"] in names
        # the same key with another body is 422; another caller's same key is their own
        other = {**order, "lines": [{"product": PRODUCTS[1], "quantity": 1}]}
        reused = await http.post("/v1/orders", json=other, headers={"Idempotency-Key": key})
        assert reused.status_code == 422
        assert reused.json()["reason"] == "IDEMPOTENCY_KEY_REUSED"
    bob = await fleet.customer("bob")
    async with fleet.client(headers={"Authorization": f"Bearer {bob}"}) as http:
        mine = {"customer": "customers/bob", "lines": [{"product": PRODUCTS[0], "quantity": 1}]}
        separate = await http.post("/v1/orders", json=mine, headers={"Idempotency-Key": key})
        assert separate.status_code == 200 and separate.json()["name"] not in names


async def test_graphql_order_with_products_matches_rest(fleet: Fleet) -> None:
    token = await fleet.customer("ann")
    headers = {"Authorization": f"Bearer {token}"}
    async with fleet.client(headers=headers) as http:
        created = await http.post(
            "/v1/orders",
            json={
                "customer": "customers/ann",
                "lines": [
                    {"product": PRODUCTS[0], "quantity": 2},
                    {"product": PRODUCTS[2], "quantity": 1},
                ],
            },
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        name = created.json()["name"]
        assert (await fleet.settled(http, name))[-1] == "ORDER_STATE_CONFIRMED"
        rest = (await http.get(f"/v1/{name}", params={"view": "FULL"})).json()
        query = """
          query Order($name: String) {
            getOrder(name: $name) {
              name customer state etag createTime
              total { currencyCode units nanos }
              lines {
                product quantity title
                unitPrice { currencyCode units nanos }
                productDetails {
                  name sku title description labels etag createTime updateTime
                  price { currencyCode units nanos }
                }
              }
            }
          }"""
        answer = await http.post("/graphql", json={"query": query, "variables": {"name": name}})
        assert answer.status_code == 200, answer.text
        graph = answer.json()["data"]["getOrder"]

    def same_keys(graph_value: object, rest_value: object) -> object:
        """The GraphQL answer, without the fields REST leaves out (proto3 JSON omits defaults)."""
        if isinstance(graph_value, dict) and isinstance(rest_value, dict):
            return {
                k: same_keys(v, rest_value[k]) for k, v in graph_value.items() if k in rest_value
            }
        if isinstance(graph_value, list) and isinstance(rest_value, list):
            return [same_keys(g, r) for g, r in zip(graph_value, rest_value, strict=True)]
        return graph_value

    assert same_keys(graph, rest) == {k: rest[k] for k in graph if k in rest}
    assert [line["productDetails"]["name"] for line in graph["lines"]] == [PRODUCTS[0], PRODUCTS[2]]
    assert graph["state"] == rest["state"] and graph["total"] == rest["total"]


async def test_graphql_applies_the_same_access_rules(fleet: Fleet) -> None:
    ann = await fleet.customer("ann")
    bob = await fleet.customer("bob")
    async with fleet.client(headers={"Authorization": f"Bearer {ann}"}) as http:
        created = await http.post(
            "/v1/orders",
            json={"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    query = {
        "query": "query($n: String) { getOrder(name: $n) { name } }",
        "variables": {"n": created.json()["name"]},
    }
    async with fleet.client(headers={"Authorization": f"Bearer {bob}"}) as http:
        denied = (await http.post("/graphql", json=query)).json()
    assert denied["data"]["getOrder"] is None
    assert denied["errors"][0]["extensions"]["status"] == 403
    async with fleet.client() as http:
        products = (
            await http.post(
                "/graphql",
                json={"query": "{ listProducts(pageSize: 2) { products { name } nextPageToken } }"},
            )
        ).json()
        assert len(products["data"]["listProducts"]["products"]) == 2
        mutation = await http.post(
            "/graphql",
            json={"query": 'mutation { deleteProduct(name: "products/x") { ok } }'},
        )
        assert mutation.json()["errors"][0]["extensions"]["status"] == 401


async def test_graphql_counts_against_the_same_rate_limits(amqp_url: str, tmp_path: Path) -> None:
    async with (
        running_fleet(
            tmp_path, amqp_url, payments=False, rate_read_burst=2, rate_read_per_second=0.01
        ) as fleet,
        fleet.client() as http,
    ):
        query = {"query": f'{{ getProduct(name: "{PRODUCTS[0]}") {{ name }} }}'}
        answers = [(await http.post("/graphql", json=query)) for _ in range(3)]
        rest = await http.get(f"/v1/{PRODUCTS[0]}")
    assert [a.json()["data"]["getProduct"] for a in answers[:2]] == [{"name": PRODUCTS[0]}] * 2
    limited = answers[2].json()
    assert limited["data"]["getProduct"] is None
    assert limited["errors"][0]["extensions"]["status"] == 429
    assert "ratelimit" in answers[2].headers
    assert rest.status_code == 429 and rest.headers["retry-after"]  # one bucket for both
