"""The event loop every service process runs on: uvloop (libuv), unless
EMPORIUM_EVENT_LOOP=asyncio asks for the standard library's.

Measured with bench/orders.py on the whole fleet: uvloop took a quarter off the CPU per order
(55.8 → 39.9 ms), in every process alike: the loop's own bookkeeping, socket I/O and the
thread hand-offs of the database layer are cheaper in C. grpc.aio, aio-pika, asyncpg and
uvicorn all run on it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from libs.runtime.config import ConfigError

T = TypeVar("T")
SETTING = "EMPORIUM_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs `main` to completion on the configured loop (like `asyncio.run`)."""
    choice = os.environ.get(SETTING, "uvloop").strip().lower() or "uvloop"
    if choice not in CHOICES:
        main.close()
        raise ConfigError(f"{SETTING}={choice!r}: use one of {', '.join(CHOICES)}")
    return asyncio.run(main) if choice == "asyncio" else uvloop.run(main)
