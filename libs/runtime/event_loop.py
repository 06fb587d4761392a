"""The event loop every service process runs on: uvloop (libuv), unless
EMPORIUM_EVENT_LOOP=asyncio asks for the standard library's.

Measured with bench/orders.py on the whole fleet: uvloop took a quarter off the CPU per order
(55.8 → 39.9 ms), in every process alike: the loop's own bookkeeping, socket I/O and the
thread hand-offs of the database layer are cheaper in C. grpc.aio, aio-pika, asyncpg and
uvicorn all run on it.

The GIL's switch interval is shortened from CPython's 5 ms: SQLite's writes run on a thread of
their own, and the `sqlite3` module lets go of the GIL around every statement; taking it back
waits until the loop's thread lets go, which a thread running Python does only once per switch
interval. With the default, a write transaction (read, update, insert) beside a loop 90% busy
took 0.2 to 1.6 s (p99 1 to 3 s) where it takes 0.3 ms alone, and up to 10 s beside a loop that
never idles: under load the writes, not the cores, set the pace. At 0.2 ms it took 5 to 7 ms
(p99 17 to 42 ms), and the loop got as much of its own work done (0.93 to 1.05 times; bench/
gil_handoff.py). The interval bounds that wait; a thread that has the GIL and wants to keep it
is asked to give it up sooner."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from libs.runtime.config import ConfigError

T = TypeVar("T")
SETTING = "EMPORIUM_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")
SWITCH_INTERVAL = 0.0002  # seconds; CPython's default is 0.005


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs `main` to completion on the configured loop (like `asyncio.run`)."""
    choice = os.environ.get(SETTING, "uvloop").strip().lower() or "uvloop"
    if choice not in CHOICES:
        main.close()
        raise ConfigError(f"{SETTING}={choice!r}: use one of {', '.join(CHOICES)}")
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        return asyncio.run(main) if choice == "asyncio" else uvloop.run(main)
    finally:
        sys.setswitchinterval(previous)
