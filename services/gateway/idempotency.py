"""Idempotency-Key for unsafe requests (draft-ietf-httpapi-idempotency-key-header).

The first request with a key runs and its response is stored; the same key with the same
request replays that response; the same key with a different request is 422; a request that
arrives while the first is still running is 409. Keys are scoped per caller. Responses of
server errors are not stored, so the client may retry them. Stored in Redis when configured
(shared by every replica), in-process otherwise.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from libs.resilience.clock import Clock, monotonic


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class Outcome(enum.Enum):
    STARTED = "started"  # run the request, then finish() or abandon()
    REPLAY = "replay"
    MISMATCH = "mismatch"  # 422
    IN_PROGRESS = "in progress"  # 409


@dataclass(frozen=True)
class Begun:
    outcome: Outcome
    stored: StoredResponse | None = None


class IdempotencyStore(Protocol):
    async def begin(self, key: str, fingerprint: str) -> Begun: ...
    async def finish(self, key: str, fingerprint: str, response: StoredResponse) -> None: ...
    async def abandon(self, key: str) -> None: ...


def _encode(fingerprint: str, response: StoredResponse | None) -> str:
    document: dict[str, object] = {"fingerprint": fingerprint}
    if response is not None:
        document |= {
            "status": response.status,
            "headers": response.headers,
            "body": response.body.decode(),
        }
    return json.dumps(document)


def _decode(raw: str | bytes, fingerprint: str) -> Begun:
    document = json.loads(raw)
    if document["fingerprint"] != fingerprint:
        return Begun(Outcome.MISMATCH)
    if "status" not in document:
        return Begun(Outcome.IN_PROGRESS)
    stored = StoredResponse(document["status"], document["headers"], document["body"].encode())
    return Begun(Outcome.REPLAY, stored)


class LocalIdempotencyStore:
    def __init__(
        self,
        ttl_seconds: float,
        lock_seconds: float,
        clock: Clock = monotonic,
        *,
        sweep_above: int = 100_000,  # entries; expired ones are dropped once it holds more
    ) -> None:
        self._ttl = ttl_seconds
        self._lock_ttl = lock_seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, str]] = {}  # key -> (expires, encoded)
        self._least_sweep = self._sweep_above = sweep_above

    def __len__(self) -> int:
        """The keys held, the expired among them until a sweep drops them."""
        return len(self._entries)

    async def begin(self, key: str, fingerprint: str) -> Begun:
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return _decode(entry[1], fingerprint)
        if len(self._entries) > self._sweep_above:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            # Live keys stay for their ttl: the next sweep waits until the store has doubled,
            # or every request would copy a store that no longer shrinks.
            self._sweep_above = max(self._least_sweep, 2 * len(self._entries))
        self._entries[key] = (now + self._lock_ttl, _encode(fingerprint, None))
        return Begun(Outcome.STARTED)

    async def finish(self, key: str, fingerprint: str, response: StoredResponse) -> None:
        self._entries[key] = (self._clock() + self._ttl, _encode(fingerprint, response))

    async def abandon(self, key: str) -> None:
        self._entries.pop(key, None)


class RedisIdempotencyStore:
    def __init__(
        self,
        redis: Redis,
        ttl_seconds: float,
        lock_seconds: float,
        prefix: str,
    ) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_seconds * 1000)
        self._lock_ms = int(lock_seconds * 1000)
        self._prefix = prefix

    async def begin(self, key: str, fingerprint: str) -> Begun:
        name = self._prefix + key
        # SET NX: of concurrent first requests, across replicas, exactly one starts.
        if await self._redis.set(name, _encode(fingerprint, None), nx=True, px=self._lock_ms):
            return Begun(Outcome.STARTED)
        raw = await self._redis.get(name)
        if raw is None:  # expired between the two calls: try once more
            return await self.begin(key, fingerprint)
        return _decode(raw, fingerprint)

    async def finish(self, key: str, fingerprint: str, response: StoredResponse) -> None:
        await self._redis.set(self._prefix + key, _encode(fingerprint, response), px=self._ttl_ms)

    async def abandon(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)
