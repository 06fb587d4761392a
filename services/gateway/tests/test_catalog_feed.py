"""The gateway's catalog change feed: the response cache is on only while the feed is up, and a
feed that cannot connect retries with backoff, one log line per attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc

from libs.resilience.backoff import Backoff
from libs.rpcclient.upstream import Upstream
from libs.runtime.background import BackgroundTask
from libs.testing.databases import sqlite_url
from libs.testing.rpc import serving
from services.catalog.app import build as build_catalog
from services.catalog.config import CatalogSettings
from services.gateway.app import _watch_catalog
from services.gateway.caching import ResponseCache

FAST = Backoff(initial=0.01, maximum=0.05)


class FeedLog(logging.Handler):
    """The feed's log lines, each with whether the cache was on when it was written."""

    def __init__(self, cache: ResponseCache) -> None:
        super().__init__()
        self.cache = cache
        self.lines: list[tuple[str, int | None, bool]] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("catalog change feed"):
            attempt = getattr(record, "attempt", None)
            self.lines.append((record.getMessage(), attempt, self.cache.enabled))
            self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.lines) < count:
            self.changed.clear()
            await self.changed.wait()


@contextlib.contextmanager
def feed_log(cache: ResponseCache) -> Iterator[FeedLog]:
    handler = FeedLog(cache)
    logger = logging.getLogger("emporium.gateway")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.asynccontextmanager
async def watching(target: str, cache: ResponseCache) -> AsyncIterator[None]:
    channel = grpc.aio.insecure_channel(target)
    feed = BackgroundTask(
        "response-cache-feed", lambda: _watch_catalog(Upstream("catalog", channel), cache, FAST)
    )
    await feed.start()
    try:
        yield
    finally:
        await feed.stop()
        await channel.close(None)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_feed_that_cannot_connect_backs_off_with_the_cache_off() -> None:
    cache = ResponseCache(60)
    with feed_log(cache) as lines:
        async with watching(f"127.0.0.1:{_closed_port()}", cache):
            await lines.wait_for(5)
    first = lines.lines[:5]
    assert [message for message, _, _ in first] == ["catalog change feed down; cache off"] * 5
    # One line per attempt, numbered on (the old loop saw empty headers as "up" and began
    # again at 1 every time), and the cache never turned on in between.
    assert [attempt for _, attempt, _ in first] == [1, 2, 3, 4, 5]
    assert not any(enabled for _, _, enabled in first)
    assert not cache.enabled


async def test_a_connected_feed_turns_the_cache_on(tmp_path: Path) -> None:
    cache = ResponseCache(60)
    catalog = await build_catalog(CatalogSettings(database_url=sqlite_url(tmp_path)))
    with feed_log(cache) as lines:
        async with serving(catalog), watching(catalog.address, cache):
            await lines.wait_for(1)
            assert lines.lines[0][0] == "catalog change feed up; cache on"
            assert cache.enabled
