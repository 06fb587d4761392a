"""The whole fleet behind a gateway, in one process, for the gateway's tests and bench: identity,
catalog (sample products), inventory, orders and payments as the launcher configures them
(tools.commands.run.fleet.in_process_fleet), found through a registry file, and the gateway on
uvicorn on port 0. Real SQLite files, a real broker (a fresh vhost)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from libs.rpcclient.discovery import LocalRegistry
from services.catalog.seed import SAMPLES
from services.gateway.app import Gateway, GatewayServer, build
from services.gateway.config import GatewaySettings
from tools.commands.run.fleet import in_process_fleet

ISSUER = "https://identity.test"
PRODUCTS = [f"products/{sample[0].lower()}" for sample in SAMPLES]


@dataclass
class Fleet:
    directory: Path
    registry: LocalRegistry
    gateways: list[Gateway]
    urls: list[str]
    inventory: inventory_grpc.InventoryServiceAsyncStub

    @property
    def url(self) -> str:
        return self.urls[0]

    def secret(self, account: str) -> str:
        return (self.directory / "identity" / "secrets" / account).read_text().strip()

    def client(self, index: int = 0, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.urls[index], timeout=30, **kwargs)

    async def token(self, username: str, password: str | None = None) -> str:
        async with self.client() as http:
            response = await http.post(
                "/v1/token",
                json={
                    "grant_type": "password",
                    "username": username,
                    "password": password or self.secret(username),
                },
            )
        response.raise_for_status()
        return str(response.json()["access_token"])

    async def customer(self, user_id: str) -> str:
        """Signs a customer up and returns their access token."""
        async with self.client() as http:
            created = await http.post(
                "/v1/users", params={"user_id": user_id}, json={"password": "correct horse"}
            )
        assert created.status_code == 200, created.text
        return await self.token(user_id, "correct horse")

    async def settled(self, http: httpx.AsyncClient, order: str) -> list[str]:
        """Watches an order over SSE until its stream ends; returns the states it went through."""
        states = []
        async with http.stream("GET", f"/v1/{order}:watch") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for event, data in sse_messages(stream):
                if event == "end":
                    break
                assert event == "message", data
                states.append(str(data["state"]))
        return states

    async def stock(self, units: int = 100) -> None:
        adjust = self.inventory.AdjustStock(None)
        for product in PRODUCTS:
            item = "inventory/items/" + product.removeprefix("products/")
            await adjust.write(inventory_pb.AdjustStockRequest(item=item, delta=units))
            await adjust.read()
        await adjust.done_writing()


class _Server(GatewayServer):
    """The gateway's server with an event for "listening", instead of polling `started`."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config, gateway)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


@asynccontextmanager
async def serve_gateway(settings: GatewaySettings) -> AsyncIterator[tuple[Gateway, str]]:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it Nagle + delayed ACK cost 40 ms on every keep-alive response.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    gateway = build(settings.model_copy(update={"port": port}))
    config = uvicorn.Config(gateway.app, log_config=None, access_log=False, lifespan="on")
    server = _Server(config, gateway)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        task.result()  # startup failed: raise why
        raise RuntimeError("the gateway stopped before it started")
    try:
        yield gateway, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        listener.close()


@asynccontextmanager
async def running_fleet(
    directory: Path,
    amqp_url: str,
    *,
    replicas: int = 1,
    payments: bool = True,
    **gateway_settings: Any,
) -> AsyncIterator[Fleet]:
    # Every service verifies the tokens the gateway forwards, as in tools/run.
    tokens: dict[str, Any] = {
        "token_issuer": ISSUER,
        "jwks_refetch_seconds": gateway_settings.get("jwks_refetch_seconds", 30.0),
    }
    names = ("identity", "catalog", "inventory", "orders", *(("payments",) if payments else ()))
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(
            in_process_fleet(
                directory,
                amqp_url,
                only=names,
                settings={
                    "identity": {"issuer": ISSUER},
                    "catalog": tokens,
                    "inventory": tokens,
                    "orders": {**tokens, "outbox_poll_seconds": 0.2, "watch_poll_seconds": 0.5},
                    "payments": {
                        **tokens,
                        "provider_latency_seconds": 0,
                        "outbox_poll_seconds": 0.2,
                    },
                },
            )
        )
        if not payments:
            services.registry.register("payments", "127.0.0.1:9")  # nothing listens: UNAVAILABLE
        # One event loop for the gateway and the services: its delay is not the gateway's
        # queue, so the loop-delay rule is off unless a test turns it on (in_process_fleet).
        gateway_settings = {"overload_queue_target_ms": 0, **gateway_settings}
        settings = GatewaySettings(
            registry_file=services.registry.path, issuer=ISSUER, **gateway_settings
        )
        gateways, urls = [], []
        for _ in range(replicas):
            gateway, url = await stack.enter_async_context(serve_gateway(settings))
            gateways.append(gateway)
            urls.append(url)
        yield Fleet(
            directory,
            services.registry,
            gateways,
            urls,
            inventory_grpc.InventoryServiceStub(services.channels["inventory"]),
        )


async def sse_messages(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) for each Server-Sent Event of a streaming response."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""
