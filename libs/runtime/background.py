"""Work that runs in the background for the life of a service (periodic jobs, change feeds
followed), started and stopped with the app's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

Hook = Callable[[], Awaitable[None]]


class Lifecycle(Protocol):
    def on_start(self, hook: Hook) -> None: ...

    def on_shutdown(self, hook: Hook) -> None: ...


class BackgroundTask:
    """`run()` as a task, from the moment the app serves until its shutdown begins."""

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._run = run
        self._task: asyncio.Task[None] | None = None

    def attach(self, app: Lifecycle) -> None:
        """Starts once the app serves; stops when its shutdown begins."""
        app.on_start(self.start)
        app.on_shutdown(self.stop)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
