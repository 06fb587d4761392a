"""Access tokens: who a request acts for, verified from an identity-issued JWT.

The gateway and the services verify the same way: the algorithm comes from a pinned list
(never from the token alone), the key from identity's JWKS by the token's `kid`, and iss, aud,
exp, nbf and iat are checked with a small clock skew. An unknown `kid` triggers one JWKS
refetch, at most once per `refetch_interval`, so a rotated key is picked up without a restart
and a flood of forged kids cannot turn into a flood of fetches.

A token verified once is remembered (by its whole text, signature included) until it expires,
while its key is still published: a client sends the same token for its lifetime, and every
service on an order's path verified it again (112 µs each, about 0.6 ms of CPU per order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

Jwks = Mapping[str, Any]  # {"keys": [{"kty": "OKP", "kid": ..., ...}, ...]}
ALGORITHMS = ("EdDSA",)
ANONYMOUS_ROLE = "anonymous"
AUTHENTICATED_ROLE = "authenticated"


class InvalidToken(Exception):
    """The token cannot be trusted; the message says why (never echoes the token)."""


@dataclass(frozen=True)
class Principal:
    """The caller a request acts for."""

    subject: str  # `users/ann`, `clients/reporting`, or "" when anonymous
    roles: frozenset[str] = frozenset()
    customer: str = ""  # `customers/ann` for customers
    scope: str = ""
    token_id: str = ""
    token: str = field(default="", repr=False)  # forwarded to services, never logged

    @property
    def anonymous(self) -> bool:
        return not self.subject

    def claim(self, name: str) -> str:
        return self.subject if name == "sub" else self.customer

    def effective_roles(self) -> frozenset[str]:
        if self.anonymous:
            return frozenset({ANONYMOUS_ROLE})
        return self.roles | {AUTHENTICATED_ROLE, ANONYMOUS_ROLE}


ANONYMOUS = Principal(subject="")


class JwksCache:
    """Public keys by kid, fetched from identity; refetched on an unknown kid (rate-limited)
    and when older than `max_age`."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Jwks]],
        *,
        refetch_interval: float = 30.0,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._refetch_interval = refetch_interval
        self._max_age = max_age
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def publishes(self, kid: str) -> bool:
        """The key is known and the keys are not due for a refetch."""
        fresh = self._fetched_at is not None and self._clock() - self._fetched_at <= self._max_age
        return fresh and kid in self._keys

    async def key(self, kid: str) -> jwt.PyJWK:
        stale = self._fetched_at is None or self._clock() - self._fetched_at > self._max_age
        if kid not in self._keys or stale:
            await self._refresh(force=stale)
        try:
            return self._keys[kid]
        except KeyError:
            raise InvalidToken("unknown signing key") from None

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            now = self._clock()
            recent = (
                self._fetched_at is not None and now - self._fetched_at < self._refetch_interval
            )
            if recent and not force:
                return  # fetched recently (maybe by a concurrent caller): no new fetch
            # A caller cancelled mid-fetch (a client gone) leaves no trace: only a completed
            # fetch, successful or not, starts the interval.
            try:
                jwks = await self._fetch()
            except Exception as error:
                self._fetched_at, self.fetches = now, self.fetches + 1
                if self._keys:
                    return  # keep serving with the keys we have; retry after the interval
                raise InvalidToken(f"cannot fetch the signing keys: {error}") from error
            self._fetched_at, self.fetches = now, self.fetches + 1
            self._keys = {
                str(jwk["kid"]): jwt.PyJWK(dict(jwk))
                for jwk in jwks.get("keys", [])
                if jwk.get("alg") in ALGORITHMS
            }


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    kid: str
    not_before: float
    expires: float


class TokenVerifier:
    def __init__(
        self,
        keys: JwksCache,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float = 30.0,
        algorithms: Sequence[str] = ALGORITHMS,
        remembered: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._algorithms = list(algorithms)
        self._remembered = remembered
        self._clock = clock
        self._verified: dict[str, _Verified] = {}  # oldest first

    async def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            now = self._clock()
            valid = known.not_before - self._leeway <= now <= known.expires + self._leeway
            if valid and self._keys.publishes(known.kid):
                return known.principal
            del self._verified[token]  # expired or its key withdrawn: verified again below
        principal, verified = await self._verify(token)
        if len(self._verified) >= self._remembered:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = verified
        return principal

    async def _verify(self, token: str) -> tuple[Principal, _Verified]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        if header.get("alg") not in self._algorithms:
            raise InvalidToken(f"algorithm {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token names no signing key")
        key = await self._keys.key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                # Times are checked below on this verifier's clock (remembered tokens use it).
                options={
                    "require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise InvalidToken("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token from another issuer") from None
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"token lacks the {error.claim!r} claim") from None
        except jwt.PyJWTError:
            raise InvalidToken("bad token signature") from None
        times = [claims[name] for name in ("exp", "nbf", "iat")]
        if not all(isinstance(value, int | float) for value in times):
            raise InvalidToken("token times are malformed")
        expires, not_before, issued = (float(value) for value in times)
        now = self._clock()
        if now > expires + self._leeway:
            raise InvalidToken("token expired")
        if now < max(not_before, issued) - self._leeway:
            raise InvalidToken("token not valid yet")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("token roles are malformed")
        principal = Principal(
            subject=str(claims["sub"]),
            roles=frozenset(roles),
            customer=str(claims.get("customer", "")),
            scope=str(claims.get("scope", "")),
            token_id=str(claims["jti"]),
            token=token,
        )
        return principal, _Verified(principal, kid, max(not_before, issued), expires)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value, None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("authorization is not a bearer token")
    return token.strip()
