"""A cache kept current by a server's change feed (a server-streaming watch such as catalog's
WatchProducts), followed for as long as the process runs.

A cache beside a feed may answer only while the feed is up: only then does every change reach
it. So the follower is told when the feed is up (the server sends the stream's headers once the
watcher is subscribed: every change committed from then on will arrive), each change, and when
it is down (the cache must empty and stay off until the next `up`). A feed that cannot connect,
or ends, is opened again with backoff, one log line per attempt."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from libs.resilience.backoff import Backoff

Change = TypeVar("Change")
Change_contra = TypeVar("Change_contra", contravariant=True)
# A feed retries for the process's lifetime: slower than a request's retries.
FEED_BACKOFF = Backoff(initial=0.5, maximum=10.0)


class FeedFollower(Protocol[Change_contra]):
    def up(self) -> None:
        """Subscribed: every change from now on will be delivered."""

    def changed(self, change: Change_contra) -> None: ...

    def down(self) -> None:
        """Changes may be missed from now until the next `up`."""


async def follow(
    name: str,
    open_feed: Callable[[], grpc.aio.UnaryStreamCall[Any, Change]],
    follower: FeedFollower[Change],
    log: logging.Logger,
    backoff: Backoff = FEED_BACKOFF,
) -> None:
    """Follows the feed `open_feed` opens until cancelled. `name` says which feed in the log
    lines: "<name> up; cache on" and "<name> down; cache off". A call that fails also
    "returns" its (empty) headers, so headers count as up only while the call is open."""
    attempt = 0
    while True:
        call = open_feed()
        code = grpc.StatusCode.UNKNOWN
        try:
            await call.initial_metadata()
            if not call.done():
                follower.up()
                attempt = 0
                log.info(f"{name} up; cache on")
                async for change in call:
                    follower.changed(change)
            code = await call.code()
        except grpc.aio.AioRpcError as error:
            code = error.code()
        finally:
            call.cancel()
            follower.down()  # cancelled too: a cache nobody keeps current must not answer
        attempt += 1
        delay = backoff.delay(attempt)
        log.info(
            f"{name} down; cache off",
            extra={"code": code.name, "attempt": attempt, "retry_in_seconds": round(delay, 3)},
        )
        await asyncio.sleep(delay)
