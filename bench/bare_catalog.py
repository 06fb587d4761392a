"""The baseline server for bench/runtime_overhead.py: the catalog's own servicer and storage on a
bare grpc.aio server, with no middleware, health, reflection or telemetry."""

from __future__ import annotations

import asyncio
import sys

import grpc

from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from services.catalog.api.servicer import CatalogServicer
from services.catalog.app import build_catalog
from services.catalog.config import CatalogSettings


async def main() -> None:
    parts = await build_catalog(CatalogSettings())
    await parts.feed.start()  # as the app's on_start does
    server = grpc.aio.server()
    pb_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(parts.catalog), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f'{{"message": "serving", "port": {port}}}', file=sys.stderr, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
