"""A background job run every few seconds for the life of a service (sweepers, reconcilers),
started and stopped with the GrpcApp's lifecycle. A failing round is logged and the next
round tries again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("emporium.runtime.periodic")

Hook = Callable[[], Awaitable[None]]


class Lifecycle(Protocol):
    def on_start(self, hook: Hook) -> None: ...

    def on_shutdown(self, hook: Hook) -> None: ...


class Periodic:
    def __init__(self, name: str, interval: float, job: Callable[[], Awaitable[object]]) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: the interval must be positive, not {interval}")
        self.name = name
        self._interval = interval
        self._job = job
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

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

    async def run_once(self) -> None:
        try:
            await self._job()
        except Exception:  # the database or an upstream may be down; the next round retries
            log.warning("%s failed; retrying next round", self.name, exc_info=True)
        self.rounds += 1

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.run_once()
