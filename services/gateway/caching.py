"""Conditional GETs and a short response cache for public reads (products).

Every GET gets a strong ETag over its body and answers If-None-Match with 304. Responses of
public routes (readable anonymously, so the same for everyone) are cached for a few seconds
and carry `Cache-Control: public, max-age`; catalog's change feed (WatchProducts) empties the
cache the moment a product changes, so the cache never serves a change later than the feed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in candidates


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    etag: str
    headers: dict[str, str]
    expires: float


class ResponseCache:
    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, CachedResponse] = {}
        self.invalidations = 0
        # Bumped by every invalidation: a response read before a change is never stored after
        # it. The cache is off until the change feed is connected (and while it is not).
        self.generation = 0
        self.enabled = False

    def get(self, key: str) -> CachedResponse | None:
        if not self.enabled:
            return None
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self._clock():
            return None
        return entry

    def put(
        self, key: str, generation: int, body: bytes, etag: str, headers: dict[str, str]
    ) -> None:
        if self.ttl <= 0 or not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = CachedResponse(body, etag, headers, self._clock() + self.ttl)

    # The catalog change feed's follower (libs.rpcclient.change_feed).
    def up(self) -> None:
        self.invalidate(enabled=True)

    def changed(self, change: Any) -> None:  # any change empties it
        self.invalidate()

    def down(self) -> None:
        self.invalidate(enabled=False)

    def invalidate(self, *, enabled: bool = True) -> None:
        self._entries.clear()
        self.generation += 1
        self.invalidations += 1
        self.enabled = enabled
