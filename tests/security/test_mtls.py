"""mTLS between services: who may connect, and who may call which method.

Inventory and orders run with security=mtls and certificates from a development CA made for the
test. Rejected: no client certificate, a certificate from another CA, an expired certificate,
and a valid certificate whose SPIFFE id the method's policy does not allow. Every method of
inventory and orders is called by an allowed and by a refused identity. Mesh mode takes the
identity from Linkerd's and Istio's headers under the same policy."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, message

from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.orders.v1 import orders_service_pb2 as orders_pb
from libs.rpcclient.discovery import LocalRegistry
from libs.security.certificates import CertificateAuthority
from libs.server.grpc_app import GrpcApp
from libs.testing.databases import sqlite_url
from libs.testing.rpc import rich_error
from services.inventory.api.policy import POLICY as INVENTORY_POLICY
from services.inventory.app import build as build_inventory
from services.inventory.config import InventorySettings
from services.orders.api.policy import POLICY as ORDERS_POLICY
from services.orders.app import build as build_orders
from services.orders.config import OrdersSettings
from tools.commands.certs.authority import ensure


@dataclass
class Deployment:
    certs: Path
    authority: CertificateAuthority
    inventory: GrpcApp
    orders: GrpcApp


@pytest.fixture
async def deployment(tmp_path: Path, amqp_url: str) -> AsyncIterator[Deployment]:
    certs = tmp_path / "certs"
    ensure(certs)
    registry = LocalRegistry(tmp_path / "registry.json")
    registry.register("catalog", "127.0.0.1:1")
    registry.register("inventory", "127.0.0.1:1")
    async with AsyncExitStack() as stack:
        inventory = await build_inventory(
            InventorySettings(database_url=sqlite_url(tmp_path), security="mtls", certs_dir=certs)
        )
        await inventory.start()
        stack.push_async_callback(inventory.stop)
        orders = await build_orders(
            OrdersSettings(
                database_url=sqlite_url(tmp_path),
                amqp_url=amqp_url,
                security="mtls",
                certs_dir=certs,
                registry_file=registry.path,
            )
        )
        await orders.start()
        stack.push_async_callback(orders.stop)
        authority = CertificateAuthority.load(
            (certs / "ca.pem").read_bytes(), (certs / "ca-key.pem").read_bytes()
        )
        yield Deployment(certs, authority, inventory, orders)


def credentials_of(certs: Path, identity: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / f"{identity}-key.pem").read_bytes(),
        (certs / f"{identity}.pem").read_bytes(),
    )


def method_call(
    channel: grpc.aio.Channel, service: str, method: str, request: message.Message, kind: str
) -> Any:
    codec = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": empty_pb2.Empty.FromString,
    }
    path = f"/{service}/{method}"
    if kind == "unary":
        return channel.unary_unary(path, **codec)(request, timeout=5)  # type: ignore[arg-type]
    if kind == "server":
        return channel.unary_stream(path, **codec)(request, timeout=5)  # type: ignore[arg-type]
    return channel.stream_stream(path, **codec)(iter(()), timeout=5)  # type: ignore[arg-type]


async def outcome(call: Any, kind: str) -> grpc.StatusCode:
    try:
        if kind == "unary":
            await call
        else:
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


INVENTORY = "emporium.inventory.v1.InventoryService"
ORDERS = "emporium.orders.v1.OrdersService"
METHODS = [
    (INVENTORY, "GetStockLevel", inventory_pb.GetStockLevelRequest(), "unary", "inventory"),
    (INVENTORY, "ListStockLevels", inventory_pb.ListStockLevelsRequest(), "unary", "inventory"),
    (INVENTORY, "ReserveStock", inventory_pb.ReserveStockRequest(), "unary", "inventory"),
    (INVENTORY, "CommitReservation", inventory_pb.CommitReservationRequest(), "unary", "inventory"),
    (
        INVENTORY,
        "ReleaseReservation",
        inventory_pb.ReleaseReservationRequest(),
        "unary",
        "inventory",
    ),
    (INVENTORY, "ListReservations", inventory_pb.ListReservationsRequest(), "unary", "inventory"),
    (INVENTORY, "AdjustStock", inventory_pb.AdjustStockRequest(), "bidi", "inventory"),
    (ORDERS, "CreateOrder", orders_pb.CreateOrderRequest(), "unary", "orders"),
    (ORDERS, "GetOrder", orders_pb.GetOrderRequest(), "unary", "orders"),
    (ORDERS, "ListOrders", orders_pb.ListOrdersRequest(), "unary", "orders"),
    (ORDERS, "CancelOrder", orders_pb.CancelOrderRequest(), "unary", "orders"),
    (ORDERS, "WatchOrder", orders_pb.WatchOrderRequest(), "server", "orders"),
]


def test_every_method_has_a_policy() -> None:
    for service, policy in ((inventory_pb, INVENTORY_POLICY), (orders_pb, ORDERS_POLICY)):
        for descriptor in service.DESCRIPTOR.services_by_name.values():
            assert set(descriptor.methods_by_name) == set(policy), descriptor.full_name
    assert {(s, m) for s, m, *_ in METHODS} == {
        (s.full_name, m)
        for module in (inventory_pb, orders_pb)
        for s in module.DESCRIPTOR.services_by_name.values()
        for m in s.methods_by_name
    }


@pytest.mark.parametrize(
    ("service", "method", "request_message", "kind", "target"),
    METHODS,
    ids=[m for _, m, *_ in METHODS],
)
async def test_policy_allows_and_refuses_each_method(
    deployment: Deployment,
    service: str,
    method: str,
    request_message: message.Message,
    kind: str,
    target: str,
) -> None:
    app = deployment.inventory if target == "inventory" else deployment.orders
    address = f"localhost:{app.port}"
    # operator may call everything; catalog is allowed nothing on inventory or orders.
    for identity, refused in (("operator", False), ("catalog", True)):
        async with grpc.aio.secure_channel(
            address, credentials_of(deployment.certs, identity)
        ) as channel:
            code = await outcome(method_call(channel, service, method, request_message, kind), kind)
        if refused:
            assert code is grpc.StatusCode.PERMISSION_DENIED, (identity, method)
        else:
            assert code is not grpc.StatusCode.PERMISSION_DENIED, (identity, method, code)


async def test_denial_names_the_caller(deployment: Deployment) -> None:
    async with grpc.aio.secure_channel(
        f"localhost:{deployment.inventory.port}", credentials_of(deployment.certs, "catalog")
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method_call(
                channel, INVENTORY, "ReserveStock", inventory_pb.ReserveStockRequest(), "unary"
            )
    error = rich_error(caught.value)
    assert error.info is not None and error.info.reason == "CALLER_NOT_ALLOWED"
    assert error.info.metadata["caller"] == "spiffe://emporium.local/ns/emporium/sa/catalog"


async def handshake_fails(port: int, credentials: grpc.ChannelCredentials) -> bool:
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        code = await outcome(
            method_call(
                channel,
                INVENTORY,
                "ListStockLevels",
                inventory_pb.ListStockLevelsRequest(),
                "unary",
            ),
            "unary",
        )
    return code is grpc.StatusCode.UNAVAILABLE


async def test_no_client_certificate_is_refused(deployment: Deployment) -> None:
    root_only = grpc.ssl_channel_credentials((deployment.certs / "ca.pem").read_bytes())
    assert await handshake_fails(deployment.inventory.port, root_only)


async def test_certificate_from_another_ca_is_refused(deployment: Deployment) -> None:
    stranger = CertificateAuthority.create("someone else's CA").issue("operator")
    credentials = grpc.ssl_channel_credentials(
        (deployment.certs / "ca.pem").read_bytes(), stranger.key_pem, stranger.certificate_pem
    )
    assert await handshake_fails(deployment.inventory.port, credentials)


async def test_expired_certificate_is_refused(deployment: Deployment) -> None:
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    expired = deployment.authority.issue("operator", not_before=long_ago, days=1)
    credentials = grpc.ssl_channel_credentials(
        (deployment.certs / "ca.pem").read_bytes(), expired.key_pem, expired.certificate_pem
    )
    assert await handshake_fails(deployment.inventory.port, credentials)


async def test_valid_certificate_is_served(deployment: Deployment) -> None:
    assert not await handshake_fails(
        deployment.inventory.port, credentials_of(deployment.certs, "operator")
    )


@pytest.mark.parametrize(
    ("header", "value", "allowed"),
    [
        # operator may read stock levels, catalog may not.
        ("l5d-client-id", "operator.emporium.serviceaccount.identity.linkerd.cluster.local", True),
        ("l5d-client-id", "catalog.emporium.serviceaccount.identity.linkerd.cluster.local", False),
        (
            "x-forwarded-client-cert",
            "By=spiffe://emporium.local/ns/emporium/sa/inventory;Hash=ab;"
            "URI=spiffe://emporium.local/ns/emporium/sa/operator",
            True,
        ),
        (
            "x-forwarded-client-cert",
            "Hash=ab;URI=spiffe://emporium.local/ns/emporium/sa/catalog",
            False,
        ),
        ("x-unrelated", "orders", False),
    ],
)
async def test_mesh_mode_takes_the_identity_from_the_sidecar(
    tmp_path: Path, header: str, value: str, allowed: bool
) -> None:
    app = await build_inventory(
        InventorySettings(database_url=sqlite_url(tmp_path), security="mesh")
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            call = channel.unary_unary(
                f"/{INVENTORY}/ListStockLevels",
                request_serializer=inventory_pb.ListStockLevelsRequest.SerializeToString,
                response_deserializer=inventory_pb.ListStockLevelsResponse.FromString,
            )
            code = await outcome(
                call(inventory_pb.ListStockLevelsRequest(), metadata=((header, value),)), "unary"
            )
        assert (code is grpc.StatusCode.OK) is allowed
        assert (code is grpc.StatusCode.PERMISSION_DENIED) is not allowed
    finally:
        await app.stop()
