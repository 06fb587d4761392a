"""In-memory fakes of identity's ports, for domain unit tests (no database, no key files)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.identity.domain.model import RefreshGrant, User


class InMemoryAccountStore:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.grants: dict[str, RefreshGrant] = {}

    async def user(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    async def add_user(self, user: User) -> bool:
        if user.user_id in self.users:
            return False
        self.users[user.user_id] = user
        return True

    async def put_user(self, user: User) -> None:
        self.users[user.user_id] = user

    async def add_refresh(self, token_hash: str, grant: RefreshGrant) -> None:
        self.grants[token_hash] = grant

    async def refresh(self, token_hash: str) -> RefreshGrant | None:
        return self.grants.get(token_hash)

    async def use_refresh(self, token_hash: str) -> bool:
        grant = self.grants[token_hash]
        if grant.used:
            return False
        self.grants[token_hash] = dataclasses.replace(grant, used=True)
        return True

    async def revoke_family(self, family: str) -> None:
        for token_hash, grant in self.grants.items():
            if grant.family == family:
                self.grants[token_hash] = dataclasses.replace(grant, revoked=True)


@dataclass(frozen=True)
class FakeSigningKey:
    kid: str
    private_key: Ed25519PrivateKey


class OneKeyRing:
    """One fresh Ed25519 key that always signs."""

    def __init__(self) -> None:
        self.key = FakeSigningKey("test-key", Ed25519PrivateKey.generate())

    def signing_key(self) -> FakeSigningKey:
        return self.key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{"kid": self.key.kid}]}
