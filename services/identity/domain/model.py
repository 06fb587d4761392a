"""What identity knows: users, service clients and refresh tokens."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    user_id: str
    password_hash: str
    roles: tuple[str, ...]
    customer: str  # `customers/<id>` for customers, "" otherwise
    create_us: int

    @property
    def name(self) -> str:
        return f"users/{self.user_id}"


@dataclass(frozen=True)
class Client:
    client_id: str
    secret_hash: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class RefreshGrant:
    """A refresh token as stored (by its hash), and the family it was rotated in."""

    family: str
    user_id: str
    scope: str
    expires_us: int
    used: bool
    revoked: bool


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    refresh_token: str
    scope: str
