"""Identity's token rules on in-memory fakes: no database, no key files, no network."""

from __future__ import annotations

import jwt
import pytest

from libs.runtime.errors import DomainError
from services.identity.domain.identity import Identity
from services.identity.tests.fakes import InMemoryAccountStore, OneKeyRing


@pytest.fixture
def store() -> InMemoryAccountStore:
    return InMemoryAccountStore()


@pytest.fixture
def keys() -> OneKeyRing:
    return OneKeyRing()


@pytest.fixture
def identity(store: InMemoryAccountStore, keys: OneKeyRing) -> Identity:
    return Identity(
        store,
        keys,
        {},
        issuer="https://id.test",
        audience="emporium",
        access_ttl=60,
        refresh_ttl=600,
    )


async def test_a_signed_up_customer_gets_a_token_signed_by_the_current_key(
    identity: Identity, keys: OneKeyRing
) -> None:
    await identity.sign_up("ann", "correct horse battery")
    issued = await identity.password_grant("ann", "correct horse battery", "")
    assert jwt.get_unverified_header(issued.access_token)["kid"] == keys.key.kid
    claims = jwt.decode(
        issued.access_token,
        keys.key.private_key.public_key(),
        algorithms=["EdDSA"],
        audience="emporium",
    )
    assert claims["sub"] == "users/ann" and claims["iss"] == "https://id.test"


async def test_a_wrong_password_is_an_invalid_grant(identity: Identity) -> None:
    await identity.sign_up("ann", "correct horse battery")
    with pytest.raises(DomainError) as raised:
        await identity.password_grant("ann", "wrong horse", "")
    assert raised.value.reason == "INVALID_GRANT"


async def test_a_reused_refresh_token_ends_its_whole_family(
    identity: Identity, store: InMemoryAccountStore
) -> None:
    await identity.sign_up("ann", "correct horse battery")
    first = await identity.password_grant("ann", "correct horse battery", "")
    second = await identity.refresh_grant(first.refresh_token)
    with pytest.raises(DomainError) as raised:
        await identity.refresh_grant(first.refresh_token)
    assert raised.value.reason == "REFRESH_TOKEN_REUSED"
    assert all(grant.revoked for grant in store.grants.values())
    with pytest.raises(DomainError):
        await identity.refresh_grant(second.refresh_token)


async def test_a_taken_user_id_is_refused_before_the_password_is_hashed(
    identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    await identity.sign_up("ann", "correct horse battery")

    def no_hashing(secret: str) -> str:
        raise AssertionError("hashed a password for a taken id (tens of ms of CPU)")

    monkeypatch.setattr("services.identity.domain.identity.hash_secret", no_hashing)
    with pytest.raises(DomainError) as raised:
        await identity.sign_up("ann", "another password")
    assert raised.value.reason == "USER_EXISTS"
