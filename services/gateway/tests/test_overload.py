"""The gateway under overload answers 503 problem+json with Retry-After at once: when an upstream
sheds (RESOURCE_EXHAUSTED OVERLOADED with grpc-retry-pushback-ms), when its own limit is
reached, and when a request's budget is shorter than the gateway's current latency. The
upstream is a catalog server whose GetProduct holds calls until the test lets them go, behind
the real runtime with a tiny limit; the gateway is the real one on uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import product_pb2
from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.config import ServiceSettings
from libs.server.grpc_app import GrpcApp
from services.gateway.config import GatewaySettings
from services.gateway.tests.fleet import serve_gateway


class HeldCatalog:
    """Catalog's GetProduct only: records the name it started with and waits for `release`."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.holding = asyncio.Condition()
        self.release = asyncio.Event()

    async def GetProduct(
        self, request: pb.GetProductRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> product_pb2.Product:
        self.started.append(request.name)
        async with self.holding:
            self.holding.notify_all()
        await self.release.wait()
        return product_pb2.Product(name=request.name, title="held")

    async def wait_for_calls(self, count: int) -> None:
        async with self.holding:
            await asyncio.wait_for(self.holding.wait_for(lambda: len(self.started) >= count), 10)


def add_held_catalog(catalog: HeldCatalog, server: grpc.aio.Server) -> None:
    server.add_registered_method_handlers(  # type: ignore[attr-defined]
        "emporium.catalog.v1.CatalogService",
        {
            "GetProduct": grpc.unary_unary_rpc_method_handler(
                catalog.GetProduct,
                request_deserializer=pb.GetProductRequest.FromString,
                response_serializer=product_pb2.Product.SerializeToString,
            )
        },
    )


@asynccontextmanager
async def catalog_and_gateway(
    directory: Path, *, catalog_limit: int, gateway_limit: int, **gateway_settings: object
) -> AsyncIterator[tuple[HeldCatalog, httpx.AsyncClient]]:
    catalog = HeldCatalog()
    app = GrpcApp(
        "catalog",
        ServiceSettings(reflection=False, max_in_flight=catalog_limit, retry_pushback_ms=1500),
        domain="catalog.emporium.dev",
    )
    app.add_servicer(add_held_catalog, catalog)
    await app.start()
    registry = LocalRegistry(directory / "registry.json")
    registry.register("catalog", app.address)
    for absent in ("identity", "inventory", "orders", "payments"):
        registry.register(absent, "127.0.0.1:9")  # nothing listens; these tests never call them
    settings = GatewaySettings(
        registry_file=registry.path,
        max_in_flight=gateway_limit,
        retry_pushback_ms=2500,
        **gateway_settings,  # type: ignore[arg-type]
    )
    try:
        async with (
            serve_gateway(settings) as (_, url),
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            yield catalog, http
            catalog.release.set()
    finally:
        catalog.release.set()
        await app.stop()


async def test_an_upstream_shedding_load_is_503_with_retry_after(tmp_path: Path) -> None:
    async with catalog_and_gateway(tmp_path, catalog_limit=1, gateway_limit=100) as (
        catalog,
        http,
    ):
        held = asyncio.ensure_future(http.get("/v1/products/held"))
        await catalog.wait_for_calls(1)

        shed = await http.get("/v1/products/other")
        assert shed.status_code == 503, shed.text
        assert shed.headers["content-type"] == "application/problem+json"
        assert shed.headers["retry-after"] == "2"  # the catalog's 1500 ms pushback, rounded up
        problem = shed.json()
        assert (problem["code"], problem["reason"]) == ("RESOURCE_EXHAUSTED", "OVERLOADED")
        assert problem["domain"] == "catalog.emporium.dev"
        assert catalog.started == ["products/held"]  # the shed call never reached the handler

        catalog.release.set()
        assert (await held).status_code == 200


async def test_the_gateway_sheds_beyond_its_own_limit(tmp_path: Path) -> None:
    async with catalog_and_gateway(tmp_path, catalog_limit=100, gateway_limit=1) as (
        catalog,
        http,
    ):
        held = asyncio.ensure_future(http.get("/v1/products/held"))
        await catalog.wait_for_calls(1)

        shed = await http.get("/v1/products/other")
        assert shed.status_code == 503, shed.text
        assert shed.headers["retry-after"] == "3"  # GATEWAY_RETRY_PUSHBACK_MS 2500, rounded up
        problem = shed.json()
        assert (problem["reason"], problem["domain"]) == ("OVERLOADED", "gateway.emporium.dev")
        assert catalog.started == ["products/held"]

        catalog.release.set()
        assert (await held).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200  # not behind the limit


async def test_a_request_whose_budget_is_shorter_than_the_gateways_latency_is_503(
    tmp_path: Path,
) -> None:
    # GATEWAY_OVERLOAD_BUDGET_FACTOR so high that once one request has been measured, any
    # latency exceeds the budget (GATEWAY_REQUEST_TIMEOUT_SECONDS): the next request is refused
    # before it reaches catalog.
    async with catalog_and_gateway(
        tmp_path, catalog_limit=100, gateway_limit=100, overload_budget_factor=1e9
    ) as (catalog, http):
        first = asyncio.ensure_future(http.get("/v1/products/first"))
        await catalog.wait_for_calls(1)
        catalog.release.set()
        assert (await first).status_code == 200

        shed = await http.get("/v1/products/second")
        assert shed.status_code == 503, shed.text
        assert shed.headers["retry-after"] == "3"
        problem = shed.json()
        assert (problem["reason"], problem["domain"]) == ("OVERLOADED", "gateway.emporium.dev")
        assert catalog.started == ["products/first"]  # the refused request never went upstream
