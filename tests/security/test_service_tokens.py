"""Services verify tokens themselves (issue 6): orders, over mTLS, with identity's keys.

A forged or expired token is UNAUTHENTICATED even from the gateway's identity; a valid token
whose roles the contract does not admit is PERMISSION_DENIED; a customer may list only their
own orders; the gateway's identity without a token is refused; another service without a
token is governed by the SPIFFE policy alone."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest

from emporium.identity.v1 import identity_service_pb2 as identity_pb
from emporium.identity.v1 import identity_service_pb2_grpc as identity_grpc
from emporium.orders.v1 import orders_service_pb2 as orders_pb
from emporium.orders.v1 import orders_service_pb2_grpc as orders_grpc
from libs.rpcclient.discovery import LocalRegistry
from libs.testing.databases import sqlite_url
from libs.testing.rpc import rich_error
from services.identity.adapters.key_files import SigningKey
from services.identity.app import build as build_identity
from services.identity.config import IdentitySettings
from services.orders.app import build as build_orders
from services.orders.config import OrdersSettings
from tests.security.test_mtls import credentials_of
from tools.commands.certs.authority import ensure
from tools.identity.accounts import init as init_identity


@dataclass
class Setup:
    certs: Path
    identity_dir: Path
    orders_address: str
    identity_address: str

    async def token(self, user: str, password: str) -> str:
        async with grpc.aio.secure_channel(
            self.identity_address, credentials_of(self.certs, "gateway")
        ) as channel:
            issued = await identity_grpc.IdentityServiceStub(channel).IssueToken(
                identity_pb.IssueTokenRequest(
                    grant_type="password", username=user, password=password
                )
            )
        return issued.access_token

    async def list_orders(
        self, caller: str, token: str | None, customer: str = ""
    ) -> grpc.StatusCode:
        metadata = [("authorization", f"Bearer {token}")] if token else []
        async with grpc.aio.secure_channel(
            self.orders_address, credentials_of(self.certs, caller)
        ) as channel:
            try:
                await orders_grpc.OrdersServiceStub(channel).ListOrders(
                    orders_pb.ListOrdersRequest(customer=customer), metadata=metadata
                )
            except grpc.aio.AioRpcError as error:
                self.last_error = rich_error(error)
                return error.code()
        return grpc.StatusCode.OK


@pytest.fixture
async def setup(tmp_path: Path, amqp_url: str) -> AsyncIterator[Setup]:
    certs = tmp_path / "certs"
    ensure(certs)
    identity_dir = tmp_path / "identity"
    init_identity(identity_dir)
    registry = LocalRegistry(tmp_path / "registry.json")
    for upstream in ("catalog", "inventory"):
        registry.register(upstream, "127.0.0.1:1")
    async with AsyncExitStack() as stack:
        identity = await build_identity(
            IdentitySettings(
                database_url=sqlite_url(tmp_path / "identity-db"),
                keys_dir=identity_dir / "keys",
                clients_file=identity_dir / "clients.json",
                users_file=identity_dir / "users.json",
                security="mtls",
                certs_dir=certs,
            )
        )
        await identity.start()
        stack.push_async_callback(identity.stop)
        target = f"localhost:{identity.port}"
        orders = await build_orders(
            OrdersSettings(
                database_url=sqlite_url(tmp_path),
                amqp_url=amqp_url,
                registry_file=registry.path,
                security="mtls",
                certs_dir=certs,
                identity_target=target,
            )
        )
        await orders.start()
        stack.push_async_callback(orders.stop)
        yield Setup(certs, identity_dir, f"localhost:{orders.port}", target)


def _secret(setup: Setup, account: str) -> str:
    return (setup.identity_dir / "secrets" / account).read_text().strip()


async def test_orders_verifies_tokens_itself(setup: Setup) -> None:
    staff = await setup.token("staff", _secret(setup, "staff"))
    assert await setup.list_orders("gateway", staff) == grpc.StatusCode.OK
    # no token from the gateway's identity: refused
    assert await setup.list_orders("gateway", None) == grpc.StatusCode.UNAUTHENTICATED
    assert setup.last_error.info.reason == "TOKEN_REQUIRED"  # type: ignore[union-attr]
    # a token signed with the right key but expired
    keys = sorted((setup.identity_dir / "keys").glob("*.pem"))
    key = SigningKey.load(keys[-1])
    now = int(time.time())
    expired = jwt.encode(
        {
            "iss": "https://identity.emporium.local",
            "aud": "emporium",
            "sub": "users/staff",
            "iat": now - 7200,
            "nbf": now - 7200,
            "exp": now - 3600,
            "jti": uuid.uuid4().hex,
            "roles": ["admin"],
        },
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid},
    )
    assert await setup.list_orders("gateway", expired) == grpc.StatusCode.UNAUTHENTICATED
    assert setup.last_error.info.reason == "INVALID_TOKEN"  # type: ignore[union-attr]
    assert (
        await setup.list_orders("operator", staff[:-3] + "abc") == grpc.StatusCode.UNAUTHENTICATED
    )


async def test_roles_and_request_ownership_at_the_service(setup: Setup) -> None:
    async with grpc.aio.secure_channel(
        setup.identity_address, credentials_of(setup.certs, "gateway")
    ) as channel:
        await identity_grpc.IdentityServiceStub(channel).CreateUser(
            identity_pb.CreateUserRequest(
                user_id="ann", user=identity_pb.User(password="correct horse")
            )
        )
    ann = await setup.token("ann", "correct horse")
    assert await setup.list_orders("gateway", ann, "customers/ann") == grpc.StatusCode.OK
    assert (
        await setup.list_orders("gateway", ann, "customers/bob")
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert setup.last_error.info.reason == "ROLE_NOT_ALLOWED"  # type: ignore[union-attr]
    assert await setup.list_orders("gateway", ann, "") == grpc.StatusCode.PERMISSION_DENIED
    # services calling services carry no user token: the SPIFFE policy governs them
    assert await setup.list_orders("operator", None) == grpc.StatusCode.OK
