"""tools/run's shutdown order: the edge stops first and alone, then the rest all at once, and a
service that outlives its grace period is killed, saying where it waited (the real process's
side of that is libs/runtime/tests/test_processes.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from libs.runtime.processes import StopHung
from tools.commands.run.fleet import edge_of, services, stop_fleet


class FakeProcess:
    """Records when it was asked to stop; exits when the test lets it (or never)."""

    def __init__(self, name: str, log: list[str], exits: bool = True) -> None:
        self.name = name
        self.log = log
        self.exits = exits
        self.asked = asyncio.Event()
        self.may_exit = asyncio.Event()
        self.killed = False

    async def terminate(self, within: float = 30.0) -> int:
        """As ServiceProcess's: SIGTERM, and past `within` a kill and StopHung."""
        self.log.append(f"term {self.name}")
        self.asked.set()
        try:
            await asyncio.wait_for(self._exit(), within)
        except TimeoutError:
            self.killed = True
            self.log.append(f"kill {self.name}")
            raise StopHung(f"where {self.name} waited") from None
        return 0

    async def _exit(self) -> None:
        if not self.exits:
            await asyncio.Event().wait()  # ignores SIGTERM
        await self.may_exit.wait()
        self.log.append(f"exit {self.name}")


def test_the_gateway_is_the_edge() -> None:
    assert edge_of(services(Path("var"))) == {"gateway"}


async def test_the_edge_stops_first_then_the_rest_together() -> None:
    log: list[str] = []
    names = ["identity", "catalog", "orders", "gateway"]
    running = {name: FakeProcess(name, log) for name in names}
    stopping = asyncio.create_task(stop_fleet(running, frozenset({"gateway"})))
    await running["gateway"].asked.wait()
    assert log == ["term gateway"]  # nobody else is asked while the edge drains
    running["gateway"].may_exit.set()
    others = [running[name] for name in names if name != "gateway"]
    await asyncio.gather(*(process.asked.wait() for process in others))
    # Every other service was asked before any of them exited: in parallel, not one by one.
    assert sorted(log[2:]) == sorted(f"term {p.name}" for p in others)
    for process in others:
        process.may_exit.set()
    await stopping
    assert log[:2] == ["term gateway", "exit gateway"]


async def test_a_service_past_its_grace_is_killed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CATALOG_GRACE_SECONDS", "0")
    monkeypatch.setattr("tools.commands.run.fleet.EXIT_MARGIN_SECONDS", 0.0)
    log: list[str] = []
    stuck = FakeProcess("catalog", log, exits=False)
    await stop_fleet({"catalog": stuck}, frozenset())
    assert stuck.killed
    assert "catalog did not stop within its grace period: where catalog waited" in (
        capsys.readouterr().err
    )
