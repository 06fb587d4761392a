"""OrderFeed: wakes the watchers of an order when this process changes it. Watchers also re-read
the order every poll interval, so changes made by another replica reach them too."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class OrderFeed:
    def __init__(self) -> None:
        self._listeners: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.closed = False

    def listen(self, order_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._listeners[order_id].add(event)
        return event

    def unlisten(self, order_id: str, event: asyncio.Event) -> None:
        listeners = self._listeners.get(order_id)
        if listeners is not None:
            listeners.discard(event)
            if not listeners:
                del self._listeners[order_id]

    def changed(self, order_id: str) -> None:
        for event in self._listeners.get(order_id, ()):
            event.set()

    def close(self) -> None:
        self.closed = True
        for listeners in self._listeners.values():
            for event in listeners:
                event.set()
