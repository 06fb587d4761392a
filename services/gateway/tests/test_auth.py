"""Authentication and authorization at the front door (acceptance 3 and 4), and the rule that
no exposed RPC goes without a declared access policy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from emporium.orders.v1 import orders_service_pb2 as orders_pb
from emporium.orders.v1 import orders_service_pb2_grpc as orders_grpc
from libs.security.access import AccessRule
from libs.testing.rpc import rich_error
from services.gateway.app import EXPOSED
from services.gateway.routes import build_routes
from services.gateway.tests.fleet import ISSUER, PRODUCTS, Fleet, running_fleet
from services.identity.adapters.key_files import SigningKey, write_key


@pytest.fixture
async def fleet(amqp_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(
        tmp_path, amqp_url, payments=False, jwks_refetch_seconds=0.5
    ) as started:
        yield started


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signing_key(fleet: Fleet) -> SigningKey:
    keys = sorted((fleet.directory / "identity" / "keys").glob("*.pem"), key=lambda p: int(p.stem))
    return SigningKey.load(keys[-1])


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "emporium",
        "sub": "users/admin",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "roles": ["admin"],
    }
    return claims | overrides


def _signed(key: SigningKey, claims: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": kid or key.kid})


def _alg_none(key: SigningKey) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


def _hs256_with_public_key(key: SigningKey) -> str:
    # The classic confusion attack: an HMAC "signed" with the published public key.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    secret = json.dumps(key.jwk).encode()
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _tampered(key: SigningKey) -> str:
    header, _payload, signature = _signed(key, _claims(roles=["customer"])).split(".")
    return f"{header}.{_b64(json.dumps(_claims(roles=['admin'])).encode())}.{signature}"


ATTACKS: dict[str, Callable[[SigningKey], str]] = {
    "alg none": _alg_none,
    "HS256 signed with the public key": _hs256_with_public_key,
    "wrong iss": lambda key: _signed(key, _claims(iss="https://evil.example")),
    "wrong aud": lambda key: _signed(key, _claims(aud="another-api")),
    "expired": lambda key: _signed(key, _claims(exp=int(time.time()) - 3600)),
    "not yet valid": lambda key: _signed(key, _claims(nbf=int(time.time()) + 3600)),
    "unknown kid": lambda key: _signed(key, _claims(), kid="no-such-key"),
    "tampered payload": _tampered,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_forged_tokens_are_401(fleet: Fleet, attack: str) -> None:
    key = _signing_key(fleet)
    async with fleet.client() as http:
        genuine = await http.get(
            "/v1/orders", headers={"Authorization": f"Bearer {_signed(key, _claims())}"}
        )
        assert genuine.status_code == 200  # the same claims, properly signed, pass
        forged = ATTACKS[attack](key)
        response = await http.get("/v1/orders", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["reason"] == "INVALID_TOKEN"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_rotated_key_is_accepted_without_a_restart(fleet: Fleet) -> None:
    jwks = fleet.gateways[0].jwks
    old_token = await fleet.token("admin")
    async with fleet.client() as http:
        assert (
            await http.get("/v1/orders", headers={"Authorization": f"Bearer {old_token}"})
        ).status_code == 200
        fetches = jwks.fetches
        write_key(fleet.directory / "identity" / "keys")
        new_token = await fleet.token("admin")
        assert (
            jwt.get_unverified_header(new_token)["kid"]
            != jwt.get_unverified_header(old_token)["kid"]
        )
        # The new kid makes the gateway refetch the JWKS, at most once per refetch interval
        # (0.5 s here): within a few intervals the new token is accepted, with no restart.
        deadline = time.monotonic() + 5
        while True:
            response = await http.get(
                "/v1/orders", headers={"Authorization": f"Bearer {new_token}"}
            )
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            assert response.json()["detail"] == "unknown signing key"
            await asyncio.sleep(0.1)
        assert response.status_code == 200, response.text
        old = await http.get("/v1/orders", headers={"Authorization": f"Bearer {old_token}"})
        assert old.status_code == 200  # the old key is still published
        assert 1 <= jwks.fetches - fetches <= 2  # rate-limited refetches, not one per request


async def test_unknown_kids_do_not_flood_identity(fleet: Fleet) -> None:
    key = _signing_key(fleet)
    jwks = fleet.gateways[0].jwks
    async with fleet.client() as http:
        await http.get("/v1/orders", headers={"Authorization": f"Bearer {_signed(key, _claims())}"})
        before = jwks.fetches
        started = time.monotonic()
        for _ in range(50):
            forged = _signed(key, _claims(), kid=uuid.uuid4().hex)
            response = await http.get("/v1/orders", headers={"Authorization": f"Bearer {forged}"})
            assert response.status_code == 401
        elapsed = time.monotonic() - started
    # At most one fetch per refetch interval (0.5 s), however many forged kids arrive.
    assert jwks.fetches - before <= 1 + elapsed / 0.5


def test_every_exposed_rpc_declares_an_access_policy() -> None:
    missing = [
        method.full_name
        for exposed in EXPOSED
        for method in exposed.service.methods
        if AccessRule.of(method) is None
    ]
    assert missing == []
    _routes, skipped = build_routes(EXPOSED)
    assert skipped == []


# -- the authorization matrix ----------------------------------------------------------------

ANON, ANN, BOB, STAFF, ADMIN = "anonymous", "customer A", "customer B", "staff", "admin"
CALLERS = (ANON, ANN, BOB, STAFF, ADMIN)
OK = "ok"  # reached the service: anything but 401/403


def _expect(anonymous: str, ann: str, bob: str, staff: str, admin: str) -> dict[str, str]:
    return dict(zip(CALLERS, (anonymous, ann, bob, staff, admin), strict=True))


# (verb, path, body, query) -> outcome per caller. Ann owns `{ann_order}`.
MATRIX: list[tuple[str, str, Any, dict[str, str], dict[str, str]]] = [
    ("GET", "/v1/products", None, {}, _expect(OK, OK, OK, OK, OK)),
    ("GET", f"/v1/{PRODUCTS[0]}", None, {}, _expect(OK, OK, OK, OK, OK)),
    ("GET", "/v1/products:watch", None, {}, _expect(OK, OK, OK, OK, OK)),
    ("GET", "/v2/products", None, {}, _expect(OK, OK, OK, OK, OK)),
    ("GET", f"/v2/{PRODUCTS[0]}", None, {}, _expect(OK, OK, OK, OK, OK)),
    (
        "POST",
        "/v1/products",
        {"sku": "X-1", "title": "X", "price": {"currencyCode": "EUR", "units": "1"}},
        {},
        _expect("401", "403", "403", OK, OK),
    ),
    (
        "PATCH",
        f"/v1/{PRODUCTS[1]}",
        {"title": "T"},
        {"update_mask": "title"},
        _expect("401", "403", "403", OK, OK),
    ),
    ("DELETE", "/v1/products/not-there", None, {}, _expect("401", "403", "403", OK, OK)),
    ("POST", "/v1/products:import", [], {}, _expect("401", "403", "403", OK, OK)),
    ("GET", "/v1/inventory/items", None, {}, _expect("401", "403", "403", OK, OK)),
    ("GET", "/v1/inventory/reservations", None, {}, _expect("401", "403", "403", OK, OK)),
    ("GET", "/v1/inventory/items/mug-01", None, {}, _expect("401", "403", "403", OK, OK)),
    ("POST", "/v1/inventory/items:adjust", [], {}, _expect("401", "403", "403", OK, OK)),
    (
        "POST",
        "/v1/inventory/reservations",
        {"lines": []},
        {},
        _expect("401", "403", "403", "403", OK),
    ),
    (
        "POST",
        "/v1/inventory/reservations/r1:commit",
        {},
        {},
        _expect("401", "403", "403", "403", OK),
    ),
    (
        "POST",
        "/v1/inventory/reservations/r1:release",
        {},
        {},
        _expect("401", "403", "403", "403", OK),
    ),
    (
        "POST",
        "/v1/orders",
        {"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]},
        {"request_id": str(uuid.uuid4())},
        _expect("401", OK, "403", OK, OK),
    ),
    ("GET", "/v1/{ann_order}", None, {}, _expect("401", OK, "403", OK, OK)),
    ("GET", "/v1/{ann_order}:watch", None, {}, _expect("401", OK, "403", OK, OK)),
    ("POST", "/v1/{ann_order}:cancel", {}, {}, _expect("401", OK, "403", OK, OK)),
    ("GET", "/v1/orders", None, {"customer": "customers/ann"}, _expect("401", OK, "403", OK, OK)),
    ("GET", "/v1/orders", None, {}, _expect("401", "403", "403", OK, OK)),
    ("GET", "/v1/payments", None, {}, _expect("401", "403", "403", OK, OK)),
    ("GET", "/v1/payments/p1", None, {}, _expect("401", "403", "403", OK, OK)),
    ("POST", "/v1/payments/p1:refund", {}, {}, _expect("401", "403", "403", "403", OK)),
    ("GET", "/v1/users/ann", None, {}, _expect("401", OK, "403", OK, OK)),
    ("GET", "/.well-known/jwks.json", None, {}, _expect(OK, OK, OK, OK, OK)),
    ("POST", "/v1/token:revoke", {"token": "x"}, {}, _expect(OK, OK, OK, OK, OK)),
]


async def test_authorization_matrix(fleet: Fleet) -> None:
    await fleet.stock()
    tokens = {
        ANN: await fleet.customer("ann"),
        BOB: await fleet.customer("bob"),
        STAFF: await fleet.token("staff"),
        ADMIN: await fleet.token("admin"),
    }
    async with fleet.client(headers={"Authorization": f"Bearer {tokens[ANN]}"}) as http:
        order = await http.post(
            "/v1/orders",
            json={"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    assert order.status_code == 200, order.text
    ann_order = order.json()["name"]
    failures = []
    async with fleet.client() as http:
        for verb, path, body, query, expected in MATRIX:
            for caller in CALLERS:
                headers = {"Authorization": f"Bearer {tokens[caller]}"} if caller in tokens else {}
                url = path.replace("{ann_order}", ann_order)
                if ":watch" in url:
                    async with http.stream(verb, url, headers=headers, params=query) as response:
                        status = response.status_code
                else:
                    response = await http.request(
                        verb, url, json=body, params=query, headers=headers
                    )
                    status = response.status_code
                outcome = str(status) if status in (401, 403) else OK
                if outcome != expected[caller]:
                    failures.append(
                        f"{verb} {path} as {caller}: {status}, expected {expected[caller]}"
                        + ("" if ":watch" in url else f" ({response.text[:300]})")
                    )
    assert failures == [], "\n".join(failures)
    # the matrix covers every route the contracts expose
    routes, _ = build_routes(EXPOSED)
    covered = {(verb, path.replace("{ann_order}", "orders/x")) for verb, path, *_ in MATRIX}
    for route in routes:
        if route.template in ("/v1/token", "/v1/users"):
            continue  # anonymous by design; exercised by every test that signs in
        assert any(verb == route.verb and route.pattern.match(path) for verb, path in covered), (
            route.template
        )


async def test_orders_itself_refuses_another_customers_order(fleet: Fleet) -> None:
    """Defence in depth: the same ownership rule, checked by orders on a direct call."""
    await fleet.stock()
    ann, bob = await fleet.customer("ann"), await fleet.customer("bob")
    async with fleet.client(headers={"Authorization": f"Bearer {ann}"}) as http:
        order = await http.post(
            "/v1/orders",
            json={"customer": "customers/ann", "lines": [{"product": PRODUCTS[0], "quantity": 1}]},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    name = order.json()["name"]
    async with grpc.aio.insecure_channel(fleet.registry.target("orders")) as channel:
        stub = orders_grpc.OrdersServiceStub(channel)
        request = orders_pb.GetOrderRequest(name=name)
        mine = await stub.GetOrder(request, metadata=[("authorization", f"Bearer {ann}")])
        assert mine.customer == "customers/ann"
        for call in (
            lambda token: stub.GetOrder(request, metadata=[("authorization", f"Bearer {token}")]),
            lambda token: anext(
                aiter(
                    stub.WatchOrder(
                        orders_pb.WatchOrderRequest(name=name),
                        metadata=[("authorization", f"Bearer {token}")],
                    )
                )
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(bob)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert rich_error(refused.value).info.reason == "NOT_OWNER"  # type: ignore[union-attr]
