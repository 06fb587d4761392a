"""/openapi.json is complete enough to drive the API without reading the contracts: every field a
request needs is a parameter or in a body, and a client generated from the document (by
openapi-python-client, offline) walks the README's scenario."""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.gateway.tests.fleet import PRODUCTS, Fleet, running_fleet


@pytest.fixture
async def fleet(amqp_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path, amqp_url) as started:
        await started.stock()
        yield started


async def spec_of(fleet: Fleet) -> dict[str, Any]:
    async with fleet.client() as http:
        document: dict[str, Any] = (await http.get("/openapi.json")).json()
    return document


def parameters(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation.get("parameters", [])}


async def test_body_mapped_routes_document_their_other_fields(fleet: Fleet) -> None:
    paths = (await spec_of(fleet))["paths"]
    sign_up = parameters(paths["/v1/users"]["post"])
    assert sign_up["user_id"]["in"] == "query" and sign_up["user_id"]["required"] is True
    assert "update_mask" in parameters(paths["/v1/products/{product}"]["patch"])
    create_product = parameters(paths["/v1/products"]["post"])
    assert create_product["product_id"]["required"] is False
    # CreateOrder's request_id travels as the Idempotency-Key, which it therefore requires.
    create_order = parameters(paths["/v1/orders"]["post"])
    assert create_order["Idempotency-Key"]["required"] is True
    assert "request_id" not in create_order
    assert create_product["Idempotency-Key"]["required"] is False
    token = paths["/v1/token"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= token.keys()


async def test_an_order_without_an_idempotency_key_is_told_to_send_one(fleet: Fleet) -> None:
    token = await fleet.customer("ann")
    async with fleet.client(headers={"Authorization": f"Bearer {token}"}) as http:
        refused = await http.post(
            "/v1/orders",
            json={"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]},
        )
    assert refused.status_code == 400
    assert refused.json()["reason"] == "IDEMPOTENCY_KEY_REQUIRED"
    assert "Idempotency-Key" in refused.json()["detail"]


async def test_the_token_endpoint_takes_an_oauth2_form(fleet: Fleet) -> None:
    async with fleet.client() as http:
        issued = await http.post(
            "/v1/token",
            data={"grant_type": "password", "username": "staff", "password": fleet.secret("staff")},
        )
    assert issued.status_code == 200, issued.text
    assert issued.json()["token_type"] == "Bearer"


@pytest.fixture
async def generated_client(tmp_path: Path, fleet: Fleet) -> AsyncIterator[Any]:
    """The package openapi-python-client writes for /openapi.json, importable."""
    spec = tmp_path / "openapi.json"
    async with fleet.client() as http:
        spec.write_bytes((await http.get("/openapi.json")).content)
    out = tmp_path / "client"
    generator = Path(sys.executable).with_name("openapi-python-client")
    # Offline: the generator reads the file and writes a package; nothing is fetched.
    generating = await asyncio.create_subprocess_exec(
        str(generator),
        "generate",
        "--path",
        str(spec),
        "--output-path",
        str(out),
        "--meta",
        "none",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await generating.communicate()
    assert generating.returncode == 0, output.decode()
    sys.path.insert(0, str(out.parent))
    try:
        yield importlib.import_module(out.name)
    finally:
        sys.path.remove(str(out.parent))
        for name in [m for m in sys.modules if m == out.name or m.startswith(out.name + ".")]:
            del sys.modules[name]


def operation(client: Any, module: str) -> Any:
    """An endpoint module of the generated client: `api.<tag>.<operation id>`."""
    return importlib.import_module(f"{client.__name__}.api.{module}")


async def test_a_generated_client_walks_the_readme(fleet: Fleet, generated_client: Any) -> None:
    """The README's walk-through, step by step, with nothing but the generated client."""
    api = generated_client
    models = importlib.import_module(f"{api.__name__}.models")
    anonymous = api.Client(base_url=fleet.url, raise_on_unexpected_status=True)

    async def token(username: str, password: str) -> str:
        issue = operation(api, "identity_v1.identity_service_issue_token")
        body = models.EmporiumIdentityV1IssueTokenRequest(
            grant_type="password", username=username, password=password
        )
        issued = await issue.asyncio(client=anonymous, body=body)
        assert isinstance(issued, models.EmporiumIdentityV1Token), issued
        return str(issued.access_token)

    # Staff stocks a product.
    staff = api.AuthenticatedClient(
        base_url=fleet.url, token=await token("staff", fleet.secret("staff"))
    )
    adjust = operation(api, "inventory_v1.inventory_service_adjust_stock")
    item = "inventory/items/" + PRODUCTS[0].removeprefix("products/")
    adjusted = await adjust.asyncio_detailed(
        client=staff, body=[models.EmporiumInventoryV1AdjustStockRequest(item=item, delta=10)]
    )
    assert adjusted.status_code == 200, adjusted.content
    # A new customer signs up and gets a token.
    sign_up = operation(api, "identity_v1.identity_service_create_user")
    created = await sign_up.asyncio_detailed(
        client=anonymous,
        user_id="ann",
        body=models.EmporiumIdentityV1User(password="correct horse battery"),
    )
    assert created.status_code == 200, created.content
    ann = api.AuthenticatedClient(
        base_url=fleet.url, token=await token("ann", "correct horse battery")
    )
    # Pages through products.
    list_products = operation(api, "catalog_v1.catalog_service_list_products")
    page = await list_products.asyncio_detailed(client=anonymous, page_size=2)
    assert page.status_code == 200 and len(page.parsed.products) == 2
    assert 'rel="next"' in page.headers["link"]
    # Orders, watches it settle, reads it back with its products.
    create = operation(api, "orders_v1.orders_service_create_order")
    line = models.EmporiumOrdersV1OrderLine(product=PRODUCTS[0], quantity=2)
    order = await create.asyncio(
        client=ann,
        body=models.EmporiumOrdersV1Order(customer="customers/ann", lines=[line]),
        idempotency_key=str(uuid.uuid4()),
    )
    assert isinstance(order, models.EmporiumOrdersV1Order), order
    order_id = order.name.removeprefix("orders/")
    # Server-Sent Events are a stream, which generated clients do not parse: read it with the
    # generated client's own configured connection (its base URL and token).
    http = ann.get_async_httpx_client()
    async with http.stream("GET", f"/v1/{order.name}:watch") as watched:
        events = (await watched.aread()).decode()
    assert "event: end" in events and "ORDER_STATE_CONFIRMED" in events
    get = operation(api, "orders_v1.orders_service_get_order")
    full = await get.asyncio(order_id, client=ann, view=models.OrdersServiceGetOrderView.FULL)
    assert isinstance(full, models.EmporiumOrdersV1Order), full
    assert full.state == "ORDER_STATE_CONFIRMED"
    assert full.lines[0].additional_properties["productDetails"]["name"] == PRODUCTS[0]
