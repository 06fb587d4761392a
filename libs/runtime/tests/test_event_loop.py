"""The loop a service process runs on, and a clear error for a bad EMPORIUM_EVENT_LOOP."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from libs.runtime import event_loop
from libs.runtime.config import ConfigError


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
