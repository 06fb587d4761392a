"""ChangeFeed: the catalog's change log as a live stream for any number of watchers.

The database's change table is the one source of truth. A single poller reads new changes in
revision order (woken at once by local writes, and every `poll_interval` for writes made by
other replicas) and fans them out to per-watcher bounded queues. A watcher first catches up from
the database, then follows the live queue; a watcher too slow for its queue falls back to
catching up from the database instead of stalling everyone else or losing changes.

Revisions increase but have gaps, and the repository returns only final changes (none can ever
commit below them: `ProductRepository.changes_after`), so "after the last one read" is always a
complete continuation. A watcher "from now" starts at the log's `Horizon` and skips the changes
above it that had committed by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from libs.runtime.shutdown import StreamsClosed
from services.catalog.domain.model import Horizon, ProductChange
from services.catalog.domain.ports import ProductRepository

log = logging.getLogger("emporium.catalog.feed")

_CLOSED = object()


def closed_at(revision: int) -> StreamsClosed:
    """The feed shut down; `revision` is where the watcher got to (resume after it)."""
    return StreamsClosed(
        f"watch again with after_revision={revision}", resume_after_revision=str(revision)
    )


class _Watcher:
    def __init__(self, queue_size: int) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue(queue_size)
        self.lagging = False

    def offer(self, change: ProductChange) -> None:
        if self.lagging:
            return
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.lagging = True

    def drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


class ChangeFeed:
    def __init__(
        self,
        repository: ProductRepository,
        *,
        poll_interval: float = 1.0,
        queue_size: int = 1024,
        batch_size: int = 500,
    ) -> None:
        self._repository = repository
        self._poll_interval = poll_interval
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._watchers: set[_Watcher] = set()
        self._wake = asyncio.Event()
        self._closed = False
        self._poller: asyncio.Task[None] | None = None
        self.last_revision = 0

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    async def start(self) -> None:
        self.last_revision = (await self._repository.horizon()).revision
        self._poller = asyncio.create_task(self._poll(), name="catalog-change-feed")

    def nudge(self) -> None:
        """A change was committed here: read it now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        """Ends every watch with StreamsClosed."""
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for watcher in self._watchers:
            watcher.drain()
            watcher.queue.put_nowait(_CLOSED)

    async def subscribe(self, after_revision: int | None) -> AsyncIterator[ProductChange]:
        """Registers a watcher now and returns its changes: those with revision > after_revision
        (None: those committed from now on), in order, until the feed closes (StreamsClosed)."""
        if self._closed:
            raise closed_at(self.last_revision if after_revision is None else after_revision)
        watcher = _Watcher(self._queue_size)
        self._watchers.add(watcher)
        cursor, now = after_revision, None
        try:
            if cursor is None:
                now = await self._repository.horizon()
                cursor = now.revision
        except BaseException:
            self._watchers.discard(watcher)
            raise
        return self._follow(watcher, cursor, now)

    async def _follow(
        self, watcher: _Watcher, cursor: int, now: Horizon | None
    ) -> AsyncIterator[ProductChange]:
        """`now`: skip the changes that had committed by then (a watch "from now")."""
        try:
            while True:
                watcher.lagging = False
                watcher.drain()
                while cursor < self.last_revision:
                    changes = await self._repository.changes_after(cursor, self._batch_size)
                    if not changes:
                        break
                    for change in changes:
                        cursor = change.revision
                        if now is None or not now.committed_by_then(cursor):
                            yield change
                while not watcher.lagging:
                    item = await watcher.queue.get()
                    if item is _CLOSED:
                        raise closed_at(cursor)
                    assert isinstance(item, ProductChange)
                    if item.revision > cursor:
                        cursor = item.revision
                        if now is None or not now.committed_by_then(cursor):
                            yield item
                if self._closed:
                    raise closed_at(cursor)
        finally:
            self._watchers.discard(watcher)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            try:
                await self._publish_new()
            except Exception:  # the database may be down; watchers wait, the next poll retries
                log.warning("change feed poll failed", exc_info=True)

    async def _publish_new(self) -> None:
        while True:
            changes = await self._repository.changes_after(self.last_revision, self._batch_size)
            for change in changes:
                self.last_revision = change.revision
                for watcher in self._watchers:
                    watcher.offer(change)
            if len(changes) < self._batch_size:
                return
