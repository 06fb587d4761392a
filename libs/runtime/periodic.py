"""A background job run every few seconds for the life of a service (sweepers, reconcilers),
started and stopped with the app's lifecycle (libs.runtime.background). A failing round is
logged and the next round tries again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from libs.runtime.background import BackgroundTask

log = logging.getLogger("emporium.runtime.periodic")


class Periodic(BackgroundTask):
    def __init__(self, name: str, interval: float, job: Callable[[], Awaitable[object]]) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: the interval must be positive, not {interval}")
        super().__init__(name, self._rounds)
        self._interval = interval
        self._job = job
        self.rounds = 0

    async def run_once(self) -> None:
        try:
            await self._job()
        except Exception:  # the database or an upstream may be down; the next round retries
            log.warning("%s failed; retrying next round", self.name, exc_info=True)
        self.rounds += 1

    async def _rounds(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.run_once()
