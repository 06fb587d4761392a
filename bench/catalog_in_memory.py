"""A catalog server for bench/get_product.py whose GetProduct reads never reach the database: the
repository answers `get` from memory after the first read. `BENCH_CATALOG_SERVER=runtime` (the
default) serves it through the full runtime exactly as services/catalog/app.py wires it;
`bare` serves the same servicer on a bare grpc.aio server. With the database out of the way, the
rest of GetProduct's cost (runtime, servicer, mapping) is what remains to measure."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import grpc

from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from libs.server.grpc_app import GrpcApp, run_service
from libs.storage.database import database_errors
from services.catalog.adapters.sql_repository import SqlProductRepository
from services.catalog.api.mapping import validate_draft
from services.catalog.api.policy import POLICY
from services.catalog.api.servicer import DOMAIN, CatalogServicer
from services.catalog.app import build_catalog
from services.catalog.config import CatalogSettings
from services.catalog.domain.catalog import Catalog
from services.catalog.domain.model import Product


class MemorizedReads:
    """The SQL repository, except that `get` answers from memory once a product has been read."""

    def __init__(self, repository: SqlProductRepository) -> None:
        self._repository = repository
        self._products: dict[str, Product] = {}

    async def get(self, product_id: str) -> Product | None:
        product = self._products.get(product_id)
        if product is None:
            product = await self._repository.get(product_id)
            if product is not None:
                self._products[product_id] = product
        return product

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repository, name)


async def in_memory_catalog(settings: CatalogSettings) -> Catalog:
    parts = await build_catalog(settings)
    await parts.feed.start()  # as the app's on_start does
    return Catalog(
        MemorizedReads(SqlProductRepository(parts.database)),
        parts.feed,
        currency_code=settings.currency_code,
        validate_draft=validate_draft,
    )


async def build(settings: CatalogSettings) -> GrpcApp:
    catalog = await in_memory_catalog(settings)
    app = GrpcApp("catalog", settings, domain=DOMAIN, policy=POLICY, translators=[database_errors])
    app.add_servicer(pb_grpc.add_CatalogServiceServicer_to_server, CatalogServicer(catalog))
    return app


async def serve_bare() -> None:
    catalog = await in_memory_catalog(CatalogSettings())
    server = grpc.aio.server()
    pb_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(catalog), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f'{{"message": "serving", "port": {port}}}', file=sys.stderr, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    kind = os.environ.get("BENCH_CATALOG_SERVER", "runtime")
    if kind == "bare":
        asyncio.run(serve_bare())
    elif kind == "runtime":
        run_service(CatalogSettings, build)
    else:
        raise SystemExit(f"BENCH_CATALOG_SERVER: must be bare or runtime (got {kind!r})")
