"""The baseline server for bench/runtime_overhead.py: the catalog's own servicer and storage on a
bare grpc.aio server, with no middleware, health, reflection or telemetry."""

from __future__ import annotations

import asyncio
import os
import sys

import grpc

from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from libs.storage.database import Database
from services.catalog.adapters.sql_repository import MIGRATIONS, SqlProductRepository
from services.catalog.api.mapping import validate_draft
from services.catalog.api.servicer import CatalogServicer
from services.catalog.domain.catalog import Catalog
from services.catalog.domain.change_feed import ChangeFeed


async def main() -> None:
    database = Database(os.environ["CATALOG_DATABASE_URL"])
    await database.migrate(MIGRATIONS)
    repository = SqlProductRepository(database)
    feed = ChangeFeed(repository)
    await feed.start()
    catalog = Catalog(repository, feed, currency_code="USD", validate_draft=validate_draft)
    server = grpc.aio.server()
    pb_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(catalog), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f'{{"message": "serving", "port": {port}}}', file=sys.stderr, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
