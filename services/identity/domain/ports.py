"""What identity's rules need from the outside: its accounts and its signing keys."""

from __future__ import annotations

from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.identity.domain.model import RefreshGrant, User

ALGORITHM = "EdDSA"  # RFC 8037: tokens are signed with Ed25519 keys


class AccountStore(Protocol):
    async def user(self, user_id: str) -> User | None: ...
    async def add_user(self, user: User) -> bool: ...  # False if the id is taken
    async def put_user(self, user: User) -> None: ...
    async def add_refresh(self, token_hash: str, grant: RefreshGrant) -> None: ...
    async def refresh(self, token_hash: str) -> RefreshGrant | None: ...
    async def use_refresh(self, token_hash: str) -> bool: ...  # False if already used
    async def revoke_family(self, family: str) -> None: ...


class SigningKey(Protocol):
    @property
    def kid(self) -> str: ...
    @property
    def private_key(self) -> Ed25519PrivateKey: ...


class KeyRing(Protocol):
    def signing_key(self) -> SigningKey:
        """The key that signs now."""
        ...

    def jwks(self) -> dict[str, Any]:
        """The public keys a verifier may meet (RFC 7517 JWK Set)."""
        ...
