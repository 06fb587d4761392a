"""gRPC calls for Locust users over the generated async stubs.

Locust runs its users as gevent greenlets on a monkey-patched process, where grpc.aio (its
poller thread, its wake-up socket pair, asyncio's selector) cannot run. So the stubs run in a
plain asyncio child process, `python -m tools.commands.load.grpc_user`, one per Locust process: a
user writes a request line to it and waits, cooperatively, for the reply line with the call's
latency (measured in the child, around the stub call alone) and status code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import gevent
import grpc
from gevent import subprocess
from gevent.event import AsyncResult
from google.protobuf.message import Message

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from libs.security.credentials import CertificateFiles

if TYPE_CHECKING:  # importing locust monkey-patches the process: not in the child
    from locust.env import Environment

TARGET_ENV = "EMPORIUM_LOAD_GRPC_TARGET"
CERTS_ENV = "EMPORIUM_LOAD_CERTS"


class GrpcCalls:
    """The Locust side: sends calls to the child and reports each to Locust as a `grpc`
    request named after its method."""

    def __init__(self, environment: Environment) -> None:
        self._environment = environment
        self._ids = itertools.count()
        self._pending: dict[int, AsyncResult[dict[str, Any]]] = {}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "tools.commands.load.grpc_user"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ.copy(),
        )
        assert self._child.stdout is not None
        gevent.spawn(self._read, self._child.stdout)

    def _read(self, replies: IO[bytes]) -> None:
        for line in replies:
            reply = json.loads(line)
            waiter = self._pending.pop(reply["id"], None)
            if waiter is not None:
                waiter.set(reply)
        for waiter in self._pending.values():  # the child is gone
            waiter.set({"ms": 0.0, "bytes": 0, "error": "the gRPC worker process exited"})

    def call(self, method: str, **arguments: Any) -> None:
        identifier = next(self._ids)
        waiter: AsyncResult[dict[str, Any]] = AsyncResult()
        self._pending[identifier] = waiter
        request = {"id": identifier, "method": method, "arguments": arguments}
        assert self._child.stdin is not None
        self._child.stdin.write((json.dumps(request) + "\n").encode())
        self._child.stdin.flush()
        reply = waiter.get() or {"ms": 0.0, "bytes": 0, "error": "no reply"}
        error = reply.get("error")
        self._environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type="grpc",
            name=f"catalog/{method}",
            response_time=reply["ms"],
            response_length=reply["bytes"],
            exception=RuntimeError(error) if error else None,
            context={},
        )

    def close(self) -> None:
        if self._child.poll() is None:
            self._child.terminate()


# -- the child: a plain asyncio process with the generated async stubs ------------------------


def _channel(target: str, certs: str | None) -> grpc.aio.Channel:
    if certs is None:
        return grpc.aio.insecure_channel(target)
    files = CertificateFiles.for_service(Path(certs), "operator")
    return grpc.aio.secure_channel(target, files.channel_credentials())


async def serve() -> None:
    """Reads request lines on stdin, runs each call concurrently, writes reply lines."""
    target = os.environ.get(TARGET_ENV)
    if not target:
        raise SystemExit(f"{TARGET_ENV}: set it to catalog's host:port")
    channel = _channel(target, os.environ.get(CERTS_ENV) or None)
    stub = pb_grpc.CatalogServiceStub(channel)

    async def get_product(arguments: dict[str, Any]) -> Message:
        return await stub.GetProduct(pb.GetProductRequest(name=arguments["name"]), timeout=10)

    async def list_products(arguments: dict[str, Any]) -> Message:
        request = pb.ListProductsRequest(page_size=arguments["page_size"])
        return await stub.ListProducts(request, timeout=10)

    calls: dict[str, Callable[[dict[str, Any]], Awaitable[Message]]] = {
        "GetProduct": get_product,
        "ListProducts": list_products,
    }
    tasks: set[asyncio.Task[None]] = set()

    async def run(request: dict[str, Any]) -> None:
        started = time.perf_counter()
        reply: dict[str, Any] = {"id": request["id"], "bytes": 0}
        try:
            response = await calls[request["method"]](request["arguments"])
            reply["bytes"] = response.ByteSize()
        except grpc.aio.AioRpcError as error:
            reply["error"] = f"{error.code().name}: {error.details()}"
        reply["ms"] = (time.perf_counter() - started) * 1000
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while line := await reader.readline():
        task = asyncio.create_task(run(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)  # stdin closed: finish what was asked, then leave
    await channel.close(None)


if __name__ == "__main__":
    asyncio.run(serve())
