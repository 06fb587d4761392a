"""The baseline for bench/gateway.py: the least a hand-written front door does for
`GET /v1/products/{id}`: one Starlette route, one gRPC call on one channel, the proto3 JSON.
No auth, limits, validation, resilience, caching, tracing or logs.

    python -m bench.starlette_baseline   (CATALOG_TARGET=host:port)
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import grpc
import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc


async def serve() -> None:
    channel = grpc.aio.insecure_channel(os.environ["CATALOG_TARGET"])
    stub = pb_grpc.CatalogServiceStub(channel)

    async def get_product(request: Request) -> Response:
        try:
            product = await stub.GetProduct(
                pb.GetProductRequest(name=f"products/{request.path_params['product']}"),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            return JSONResponse({"detail": error.details()}, status_code=502)
        return JSONResponse(json_format.MessageToDict(product))

    app = Starlette(routes=[Route("/v1/products/{product}", get_product)])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # NODELAY
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    print(
        f'{{"message": "serving", "port": {listener.getsockname()[1]}}}',
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, log_config=None, access_log=False)
    await uvicorn.Server(config).serve(sockets=[listener])


if __name__ == "__main__":
    asyncio.run(serve())
