"""TokenVerifier remembers a verified token until it expires or its key is withdrawn, and never
lets a remembered token vouch for another text."""

from __future__ import annotations

import json
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from libs.security.tokens import InvalidToken, Jwks, JwksCache, TokenVerifier

ISSUER, AUDIENCE = "https://identity.emporium.local", "emporium"
SIGNING_KEY = Ed25519PrivateKey.generate()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000.0

    def __call__(self) -> float:
        return self.now


class Identity:
    def __init__(self) -> None:
        self.kids = ["a"]

    async def fetch(self) -> Jwks:
        public = json.loads(OKPAlgorithm.to_jwk(SIGNING_KEY.public_key()))
        return {"keys": [{**public, "kid": kid, "alg": "EdDSA"} for kid in self.kids]}


def token(now: float, *, lifetime: float = 600, key: Ed25519PrivateKey = SIGNING_KEY) -> str:
    claims = {
        "sub": "users/ann",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + lifetime),
        "jti": str(uuid.uuid4()),
        "roles": ["customer"],
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "a"})


def verifier(identity: Identity, clock: Clock) -> TokenVerifier:
    keys = JwksCache(identity.fetch, max_age=300, clock=clock)
    return TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=30, clock=clock)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature check the verifier makes."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: object, **kwargs: object) -> object:
        seen.append(token)
        return real(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


async def test_a_token_is_verified_once_while_it_is_valid(decodes: list[str]) -> None:
    clock = Clock()
    check = verifier(Identity(), clock)
    sent = token(clock.now)
    for _ in range(5):
        assert (await check.verify(sent)).subject == "users/ann"
        clock.now += 50
    assert decodes == [sent]


async def test_a_remembered_token_still_expires(decodes: list[str]) -> None:
    clock = Clock()
    check = verifier(Identity(), clock)
    sent = token(clock.now, lifetime=60)
    await check.verify(sent)
    clock.now += 60 + 31  # past exp and the leeway
    with pytest.raises(InvalidToken, match="expired"):
        await check.verify(sent)


async def test_a_withdrawn_key_ends_its_remembered_tokens() -> None:
    clock, identity = Clock(), Identity()
    check = verifier(identity, clock)
    sent = token(clock.now)
    await check.verify(sent)
    identity.kids = ["b"]  # key "a" rotated out
    clock.now += 301  # the keys are refetched once older than max_age
    with pytest.raises(InvalidToken, match="unknown signing key"):
        await check.verify(sent)


async def test_a_forged_signature_is_not_served_from_memory() -> None:
    clock = Clock()
    check = verifier(Identity(), clock)
    genuine = token(clock.now)
    await check.verify(genuine)
    header_and_claims = genuine.rpartition(".")[0]
    forged = token(clock.now, key=Ed25519PrivateKey.generate())
    with pytest.raises(InvalidToken, match="signature"):
        await check.verify(f"{header_and_claims}.{forged.rpartition('.')[2]}")
