"""Token buckets per caller and route class: in-process, or shared by every replica through
Redis (one Lua script, so a take is atomic and uses Redis's clock, not each replica's)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis


@dataclass(frozen=True)
class BucketPolicy:
    capacity: int  # the burst
    per_second: float  # the sustained rate

    @property
    def window_seconds(self) -> int:
        """How long an empty bucket takes to fill: the policy's window for RateLimit headers."""
        return max(1, math.ceil(self.capacity / self.per_second))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: int
    retry_after: float  # seconds until one token is back (0 when allowed)
    reset: float  # seconds until the bucket is full again

    def headers(self, route_class: str, policy: BucketPolicy) -> dict[str, str]:
        """draft-ietf-httpapi-ratelimit-headers: the policy and where the caller stands."""
        headers = {
            "RateLimit-Policy": f'"{route_class}";q={policy.capacity};w={policy.window_seconds}',
            "RateLimit": f'"{route_class}";r={self.remaining};t={math.ceil(self.reset)}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


class RateLimiter(Protocol):
    async def take(self, key: str, policy: BucketPolicy) -> Verdict: ...


def _verdict(tokens: float, allowed: bool, policy: BucketPolicy) -> Verdict:
    missing = policy.capacity - tokens
    return Verdict(
        allowed=allowed,
        remaining=int(tokens),
        retry_after=0.0 if allowed else (1 - tokens) / policy.per_second,
        reset=missing / policy.per_second,
    )


class LocalRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._max_keys = max_keys

    async def take(self, key: str, policy: BucketPolicy) -> Verdict:
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(policy.capacity), now))
        tokens = min(policy.capacity, tokens + (now - at) * policy.per_second)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        if len(self._buckets) >= self._max_keys:
            self._buckets.clear()  # full buckets are the default: forgetting them is safe
        self._buckets[key] = (tokens, now)
        return _verdict(tokens, allowed, policy)


_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class RedisRateLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_TAKE)

    async def take(self, key: str, policy: BucketPolicy) -> Verdict:
        allowed, tokens = await self._script(
            keys=[self._prefix + key], args=[policy.capacity, policy.per_second]
        )
        return _verdict(float(tokens), bool(allowed), policy)
