"""Baseline upstream for bench/client_kit.py: the standard health service, whose Watch streams
a fixed number of messages at once (needs only grpcio and grpcio-health-checking)."""

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
STREAM_LENGTH = 1000


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:
        return SERVING

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for _ in range(STREAM_LENGTH):
            yield SERVING


async def main() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f'{{"message": "serving", "port": {port}}}', file=sys.stderr, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
