"""LevelFeed: stock level changes fanned out to connected AdjustStock sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from services.inventory.domain.model import StockLevel


class LevelFeed:
    def __init__(self, queue_size: int = 1024) -> None:
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[tuple[object, StockLevel] | None]] = set()

    def subscribe(self) -> asyncio.Queue[tuple[object, StockLevel] | None]:
        queue: asyncio.Queue[tuple[object, StockLevel] | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[object, StockLevel] | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, levels: Iterable[StockLevel], source: object = None) -> None:
        """`source` identifies the session that made the change, so it is not told twice."""
        for level in levels:
            for queue in self._subscribers:
                if not queue.full():  # a session too slow to read misses intermediate levels
                    queue.put_nowait((source, level))

    def close(self) -> None:
        for queue in self._subscribers:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
