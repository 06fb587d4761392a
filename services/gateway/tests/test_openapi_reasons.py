"""/openapi.json lists, on each operation, the error reasons it may return: its domain's
ErrorReason enum from the contracts, then the shared one (`emporium.errors.v1`)."""

from __future__ import annotations

from pathlib import Path

import httpx

from libs.rpcclient.discovery import LocalRegistry
from services.gateway.config import GatewaySettings
from services.gateway.openapi import error_reasons
from services.gateway.tests.fleet import serve_gateway


def test_a_later_version_shares_its_domains_reasons() -> None:
    v1 = error_reasons("emporium.catalog.v1")
    assert error_reasons("emporium.catalog.v2") == v1
    assert v1.index("PRODUCT_NOT_FOUND") < v1.index("SHUTTING_DOWN")  # its own first
    assert "ORDER_CONFIRMED" not in v1


async def test_every_operation_lists_its_reasons(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry.json")
    for service in ("catalog", "inventory", "orders", "payments", "identity"):
        registry.register(service, "127.0.0.1:9")  # named only: nothing is called
    settings = GatewaySettings(registry_file=registry.path, port=0)
    async with serve_gateway(settings) as (_, url), httpx.AsyncClient() as http:
        document = (await http.get(f"{url}/openapi.json")).json()
    operations = {
        operation["operationId"]: operation
        for path in document["paths"].values()
        for operation in path.values()
    }
    assert operations
    for operation in operations.values():
        assert "RATE_LIMITED" in operation["x-emporium-reasons"]
    cancel = next(o for i, o in operations.items() if "CancelOrder" in i)
    assert "ORDER_CONFIRMED" in cancel["x-emporium-reasons"]
    assert "PAYMENT_NOT_FOUND" not in cancel["x-emporium-reasons"]
