"""JwksCache: one fetch per interval on unknown kids, stale keys kept when identity is down, and
a fetch cancelled half-way (the client went away) does not block the next caller."""

from __future__ import annotations

import asyncio

import pytest

from libs.security.tokens import InvalidToken, Jwks, JwksCache

KEY = {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    "alg": "EdDSA",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Identity:
    def __init__(self) -> None:
        self.kids = ["a"]
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None
        self.fetching = asyncio.Event()

    async def fetch(self) -> Jwks:
        self.calls += 1
        self.fetching.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionError("identity unreachable")
        return {"keys": [{**KEY, "kid": kid} for kid in self.kids]}


async def test_unknown_kids_refetch_at_most_once_per_interval() -> None:
    clock, identity = Clock(), Identity()
    cache = JwksCache(identity.fetch, refetch_interval=30, clock=clock)
    await cache.key("a")
    for _ in range(20):
        with pytest.raises(InvalidToken):
            await cache.key("forged")
    assert identity.calls == 1  # the first fetch was just now: no refetch yet
    identity.kids.append("b")
    clock.now += 31
    assert (await cache.key("b")).key_id == "b"
    assert identity.calls == 2


async def test_keys_survive_identity_being_down() -> None:
    clock, identity = Clock(), Identity()
    cache = JwksCache(identity.fetch, refetch_interval=1, max_age=10, clock=clock)
    await cache.key("a")
    identity.down = True
    clock.now += 11  # stale: refetch, fail, keep serving the old keys
    assert (await cache.key("a")).key_id == "a"
    fresh = JwksCache(identity.fetch, clock=clock)
    with pytest.raises(InvalidToken, match="cannot fetch"):
        await fresh.key("a")


async def test_a_cancelled_fetch_does_not_start_the_interval() -> None:
    clock, identity = Clock(), Identity()
    cache = JwksCache(identity.fetch, refetch_interval=30, clock=clock)
    identity.gate = asyncio.Event()
    first = asyncio.create_task(cache.key("a"))
    await identity.fetching.wait()  # the fetch has started and waits on identity
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    identity.gate.set()
    assert (await cache.key("a")).key_id == "a"  # fetched again at once, not refused for 30 s
