"""The identity service in-process on SQLite and PostgreSQL: grants, refresh rotation and
reuse detection, revocation, sign-up, and key rotation seen through GetJwks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from emporium.identity.v1 import identity_service_pb2 as pb
from emporium.identity.v1 import identity_service_pb2_grpc as pb_grpc
from libs.security.tokens import InvalidToken, Jwks, JwksCache, TokenVerifier
from libs.testing.rpc import rich_error, serving
from services.identity.adapters.key_files import write_key
from services.identity.app import build
from services.identity.config import IdentitySettings
from tools.identity.accounts import init

ISSUER = "https://identity.test"


@dataclass
class Running:
    stub: pb_grpc.IdentityServiceAsyncStub
    secrets: Path
    keys: Path
    verifier: TokenVerifier

    def secret(self, account: str) -> str:
        return (self.secrets / account).read_text().strip()


@pytest.fixture
async def identity(database_url: str, tmp_path: Path) -> AsyncIterator[Running]:
    init(tmp_path)
    settings = IdentitySettings(
        database_url=database_url,
        keys_dir=tmp_path / "keys",
        clients_file=tmp_path / "clients.json",
        users_file=tmp_path / "users.json",
        issuer=ISSUER,
        access_token_ttl_seconds=60,
    )
    async with serving(await build(settings)) as channel:
        stub = pb_grpc.IdentityServiceStub(channel)

        async def fetch() -> Jwks:
            return json_format.MessageToDict(await stub.GetJwks(pb.GetJwksRequest()))

        verifier = TokenVerifier(JwksCache(fetch), issuer=ISSUER, audience="emporium")
        yield Running(stub, tmp_path / "secrets", tmp_path / "keys", verifier)


async def sign_up(identity: Running, user_id: str = "ann") -> pb.Token:
    await identity.stub.CreateUser(
        pb.CreateUserRequest(user_id=user_id, user=pb.User(password="correct horse"))
    )
    return await identity.stub.IssueToken(
        pb.IssueTokenRequest(grant_type="password", username=user_id, password="correct horse")
    )


async def test_password_grant_issues_a_verifiable_customer_token(identity: Running) -> None:
    token = await sign_up(identity)
    principal = await identity.verifier.verify(token.access_token)
    assert principal.subject == "users/ann"
    assert principal.roles == {"customer"}
    assert principal.customer == "customers/ann"
    assert token.token_type == "Bearer" and token.expires_in == 60 and token.refresh_token


async def test_bootstrap_users_and_service_clients_get_their_roles(identity: Running) -> None:
    admin = await identity.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type="password", username="admin", password=identity.secret("admin")
        )
    )
    assert (await identity.verifier.verify(admin.access_token)).roles == {"admin"}
    client = await identity.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type="client_credentials",
            client_id="reporting",
            client_secret=identity.secret("reporting"),
        )
    )
    principal = await identity.verifier.verify(client.access_token)
    assert principal.subject == "clients/reporting" and principal.roles == {"service"}
    assert client.refresh_token == ""


@pytest.mark.parametrize(
    ("request_fields", "code", "reason"),
    [
        (
            {"grant_type": "password", "username": "ann", "password": "wrong password"},
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_GRANT",
        ),
        (
            {"grant_type": "password", "username": "nobody", "password": "correct horse"},
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_GRANT",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "reporting", "client_secret": "x"},
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CLIENT",
        ),
        ({"grant_type": "password"}, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_CREDENTIALS"),
        (
            {
                "grant_type": "password",
                "username": "ann",
                "password": "correct horse",
                "scope": "admin",
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_SCOPE",
        ),
        ({"grant_type": "implicit"}, grpc.StatusCode.INVALID_ARGUMENT, None),
    ],
)
async def test_bad_grants_get_clear_errors(
    identity: Running, request_fields: dict[str, str], code: grpc.StatusCode, reason: str | None
) -> None:
    await sign_up(identity)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.stub.IssueToken(pb.IssueTokenRequest(**request_fields))
    error = rich_error(raised.value)
    assert error.code == code
    if reason:
        assert error.info is not None and error.info.reason == reason
    else:
        assert error.fields == ["grant_type"]


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(identity: Running) -> None:
    first = await sign_up(identity)
    second = await identity.stub.IssueToken(
        pb.IssueTokenRequest(grant_type="refresh_token", refresh_token=first.refresh_token)
    )
    assert second.refresh_token != first.refresh_token
    assert (await identity.verifier.verify(second.access_token)).subject == "users/ann"
    # The first token again: reuse. It fails, and so does its successor from now on.
    for token in (first.refresh_token, second.refresh_token):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await identity.stub.IssueToken(
                pb.IssueTokenRequest(grant_type="refresh_token", refresh_token=token)
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_concurrent_refreshes_with_one_token_yield_one_winner(identity: Running) -> None:
    token = await sign_up(identity)
    request = pb.IssueTokenRequest(grant_type="refresh_token", refresh_token=token.refresh_token)
    results = await asyncio.gather(
        *(identity.stub.IssueToken(request) for _ in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, pb.Token) for r in results) == 1


async def test_revoked_refresh_token_is_refused(identity: Running) -> None:
    token = await sign_up(identity)
    await identity.stub.RevokeToken(pb.RevokeTokenRequest(token=token.refresh_token))
    await identity.stub.RevokeToken(pb.RevokeTokenRequest(token="never-issued"))  # no error
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.stub.IssueToken(
            pb.IssueTokenRequest(grant_type="refresh_token", refresh_token=token.refresh_token)
        )
    assert rich_error(raised.value).info.reason == "INVALID_GRANT"  # type: ignore[union-attr]


async def test_signing_up_twice_is_already_exists(identity: Running) -> None:
    await sign_up(identity)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sign_up(identity)
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # The store's unique key surfaces as the domain's reason, not the storage layer's CONFLICT.
    info = rich_error(raised.value).info
    assert info is not None and info.reason == "USER_EXISTS"
    assert raised.value.details() == "users/ann already exists"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.stub.CreateUser(
            pb.CreateUserRequest(user_id="bo", user=pb.User(password="short"))
        )
    assert sorted(rich_error(raised.value).fields) == ["user.password", "user_id"]


async def test_a_rotated_key_signs_and_the_old_one_stays_published(identity: Running) -> None:
    old = await sign_up(identity)
    before = await identity.stub.GetJwks(pb.GetJwksRequest())
    write_key(identity.keys, starts_at=None)
    after = await identity.stub.GetJwks(pb.GetJwksRequest())
    assert len(before.keys) == 1 and len(after.keys) == 2
    assert after.keys[1].kid == before.keys[0].kid  # the old key, still published
    new = await identity.stub.IssueToken(
        pb.IssueTokenRequest(grant_type="password", username="ann", password="correct horse")
    )
    # Both verify with one verifier: the new kid triggers one refetch.
    assert (await identity.verifier.verify(old.access_token)).subject == "users/ann"
    assert (await identity.verifier.verify(new.access_token)).subject == "users/ann"
    with pytest.raises(InvalidToken):
        await identity.verifier.verify(new.access_token[:-4] + "AAAA")
