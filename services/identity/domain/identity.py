"""The token endpoint's rules (RFC 6749, OAuth 2.0 Security BCP for refresh rotation)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import Mapping

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from libs.runtime.errors import DomainError, ErrorKind, FieldViolation, invalid_argument
from libs.runtime.reasons import SharedReason
from services.identity.domain.model import Client, IssuedToken, RefreshGrant, User
from services.identity.domain.ports import ALGORITHM, AccountStore, KeyRing
from services.identity.domain.reasons import Reason

CUSTOMER = "customer"
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the account does not exist, so both paths cost one Argon2 verification
    (made on first use: hashing costs tens of milliseconds, not for every import)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def _now_micros() -> int:
    return time.time_ns() // 1_000


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


async def secret_matches(secret_hash: str, secret: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(secret_hash, secret)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _invalid_grant(message: str, reason: str = Reason.INVALID_GRANT) -> DomainError:
    return DomainError(ErrorKind.UNAUTHENTICATED, reason, message)


def _user_exists(user_id: str) -> DomainError:
    return DomainError(
        ErrorKind.ALREADY_EXISTS,
        Reason.USER_EXISTS,
        f"users/{user_id} already exists",
        {"user": f"users/{user_id}"},
    )


def _missing(grant: str, *fields: str) -> DomainError:
    return invalid_argument(
        Reason.MISSING_CREDENTIALS,
        f"the {grant} grant needs {' and '.join(fields)}",
        [
            FieldViolation(f, f"required for grant_type={grant}", SharedReason.REQUIRED)
            for f in fields
        ],
    )


class Identity:
    def __init__(
        self,
        store: AccountStore,
        keys: KeyRing,
        clients: Mapping[str, Client],
        *,
        issuer: str,
        audience: str,
        access_ttl: int,
        refresh_ttl: int,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clients = clients
        self._issuer = issuer
        self._audience = audience
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl

    async def password_grant(self, username: str, password: str, scope: str) -> IssuedToken:
        if not username or not password:
            raise _missing("password", "username", "password")
        user = await self._store.user(username)
        matches = await secret_matches(user.password_hash if user else _dummy_hash(), password)
        if user is None or not matches:
            raise _invalid_grant("wrong username or password")
        granted = self._narrow(user.roles, scope)
        family = uuid.uuid4().hex
        return await self._issue(user, granted, family)

    async def client_credentials_grant(
        self, client_id: str, client_secret: str, scope: str
    ) -> IssuedToken:
        if not client_id or not client_secret:
            raise _missing("client_credentials", "client_id", "client_secret")
        client = self._clients.get(client_id)
        matches = await secret_matches(
            client.secret_hash if client else _dummy_hash(), client_secret
        )
        if client is None or not matches:
            raise _invalid_grant("wrong client id or secret", Reason.INVALID_CLIENT)
        granted = self._narrow(client.roles, scope)
        access = self._sign(f"clients/{client_id}", granted, customer="")
        return IssuedToken(access, self._access_ttl, "", " ".join(granted))

    async def refresh_grant(self, refresh_token: str) -> IssuedToken:
        if not refresh_token:
            raise _missing("refresh_token", "refresh_token")
        token_hash = _token_hash(refresh_token)
        grant = await self._store.refresh(token_hash)
        if grant is None or grant.revoked or grant.expires_us < _now_micros():
            raise _invalid_grant("refresh token is unknown, expired or revoked")
        if grant.used or not await self._store.use_refresh(token_hash):
            # A used token presented again means it leaked: end the whole family (BCP 4.14).
            await self._store.revoke_family(grant.family)
            raise _invalid_grant("refresh token was already used", Reason.REFRESH_TOKEN_REUSED)
        user = await self._store.user(grant.user_id)
        if user is None:
            raise _invalid_grant("the user no longer exists")
        granted = self._narrow(user.roles, grant.scope)
        return await self._issue(user, granted, grant.family)

    async def revoke(self, refresh_token: str) -> None:
        grant = await self._store.refresh(_token_hash(refresh_token))
        if grant is not None:
            await self._store.revoke_family(grant.family)

    async def sign_up(self, user_id: str, password: str) -> User:
        # A taken id is refused before the password is hashed (tens of milliseconds of CPU);
        # the store's key still settles a race between two sign-ups.
        if await self._store.user(user_id) is not None:
            raise _user_exists(user_id)
        user = User(
            user_id=user_id,
            password_hash=await asyncio.to_thread(hash_secret, password),
            roles=(CUSTOMER,),
            customer=f"customers/{user_id}",
            create_us=_now_micros(),
        )
        if not await self._store.add_user(user):
            raise _user_exists(user_id)
        return user

    async def user(self, user_id: str) -> User:
        user = await self._store.user(user_id)
        if user is None:
            raise DomainError(
                ErrorKind.NOT_FOUND, Reason.USER_NOT_FOUND, f"users/{user_id} does not exist"
            )
        return user

    def _narrow(self, roles: tuple[str, ...], scope: str) -> tuple[str, ...]:
        requested = scope.split()
        if not requested:
            return tuple(sorted(roles))
        unknown = sorted(set(requested) - set(roles))
        if unknown:
            raise invalid_argument(
                Reason.INVALID_SCOPE,
                f"scope asks for what the caller may not have: {' '.join(unknown)}",
                [
                    FieldViolation(
                        "scope", f"not granted: {' '.join(unknown)}", Reason.INVALID_SCOPE
                    )
                ],
            )
        return tuple(sorted(set(requested)))

    async def _issue(self, user: User, roles: tuple[str, ...], family: str) -> IssuedToken:
        access = self._sign(user.name, roles, customer=user.customer)
        refresh = secrets.token_urlsafe(32)
        await self._store.add_refresh(
            _token_hash(refresh),
            RefreshGrant(
                family=family,
                user_id=user.user_id,
                scope=" ".join(roles),
                expires_us=_now_micros() + self._refresh_ttl * 1_000_000,
                used=False,
                revoked=False,
            ),
        )
        return IssuedToken(access, self._access_ttl, refresh, " ".join(roles))

    def _sign(self, subject: str, roles: tuple[str, ...], *, customer: str) -> str:
        key = self._keys.signing_key()
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + self._access_ttl,
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
            "scope": " ".join(roles),
        }
        if customer:
            claims["customer"] = customer
        return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
