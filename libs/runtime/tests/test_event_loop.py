"""The loop a service process runs on, and a clear error for a bad EMPORIUM_EVENT_LOOP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import uvloop

from libs.runtime import event_loop
from libs.runtime.config import ConfigError
from libs.storage.database import Database
from libs.storage.transaction import Transaction


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_services_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.SETTING, raising=False)
    assert isinstance(event_loop.run(running_loop()), uvloop.Loop)


def test_the_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.SETTING, "asyncio")
    assert not isinstance(event_loop.run(running_loop()), uvloop.Loop)


def test_a_bad_choice_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.SETTING, "trio")
    with pytest.raises(ConfigError, match="EMPORIUM_EVENT_LOOP='trio': use one of uvloop"):
        event_loop.run(running_loop())


async def busy_steps_until_a_write_commits(path: str) -> int:
    """How many steps of 1 ms of Python the loop runs, never idle, while one SQLite write
    transaction (on the database's own thread) commits."""
    database = Database(f"sqlite+aiosqlite:///{path}")

    async def create(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")

    async def write(tx: Transaction) -> None:
        for n in range(3):
            await tx.execute("INSERT INTO notes (body) VALUES ($1)", f"note {n}")

    await database.transaction(create)  # the writer thread and its connection are ready
    write_done = asyncio.ensure_future(database.transaction(write))
    steps = 0
    while not write_done.done():
        deadline = time.perf_counter() + 0.001
        while time.perf_counter() < deadline:
            pass
        steps += 1
        await asyncio.sleep(0)
    await write_done
    await database.dispose()
    return steps


def test_a_write_commits_while_the_loop_is_busy(tmp_path: Path) -> None:
    # The SQLite thread takes the GIL back after each statement; with CPython's default switch
    # interval (5 ms) a loop that never idles made it wait 5 ms each time (bench/gil_handoff.py).
    steps = event_loop.run(busy_steps_until_a_write_commits(str(tmp_path / "notes.db")))
    assert steps <= 20, f"the loop ran {steps} ms of Python before the write committed"
