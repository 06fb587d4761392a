"""A grpc.aio unary echo server that needs nothing but grpcio (any version): raw bytes in and
out, so bench/grpcio_versions.py can run it in a virtualenv per grpcio release."""

import asyncio
import sys

import grpc


async def echo(request: bytes, context: object) -> bytes:
    return request


async def main() -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f'{{"message": "serving", "port": {port}}}', file=sys.stderr, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
