"""Services as child processes on loopback: start one, wait for its `serving` log line, stop it.
Used by the dev launcher, the benchmarks and the process tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from libs.runtime.stacks import FOOTER, HEADER

REPO = Path(__file__).resolve().parents[2]


# Past the default grace period (10 s) and the stop hooks: a service still running is hung.
STOP_WITHIN_SECONDS = 30.0


class StopHung(RuntimeError):
    """A service did not stop after SIGTERM (the message holds where it waited)."""


@dataclass
class ServiceProcess:
    process: asyncio.subprocess.Process
    port: int
    log_lines: list[dict[str, object]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _new_line: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def last_lines(self, count: int = 20) -> str:
        """Its last `count` log lines, one per line: what it said before it exited."""
        return "\n".join(str(line) for line in self.log_lines[-count:])

    async def wait_for_log(self, message: str, count: int = 1, within: float = 30.0) -> None:
        """Returns once the service has logged `message` `count` times."""

        def seen() -> bool:
            return sum(1 for line in self.log_lines if line.get("message") == message) >= count

        async with asyncio.timeout(within), self._new_line:
            await self._new_line.wait_for(seen)

    async def _add_line(self, line: dict[str, object]) -> None:
        self.log_lines.append(line)
        async with self._new_line:
            self._new_line.notify_all()

    async def terminate(self, within: float = STOP_WITHIN_SECONDS) -> int:
        """SIGTERM, then its exit code. One still running after `within` seconds is hung: it
        is asked where it waits (SIGUSR1, printed to its log), killed, and StopHung raised
        with that printout."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.process.wait()), within)
        except TimeoutError:
            pass
        printed = len(self.log_lines)
        with contextlib.suppress(ProcessLookupError):  # (it may have exited just now)
            self.process.send_signal(signal.SIGUSR1)
        try:
            await self.wait_for_log(HEADER, within=5.0)
        except TimeoutError:
            await self.kill()
            raise StopHung(
                f"still running {within:.0f} s after SIGTERM, and nothing printed on SIGUSR1:"
                " its event loop is blocked"
            ) from None
        with contextlib.suppress(TimeoutError):  # the whole printout, then the kill
            await self.wait_for_log(FOOTER, within=5.0)
        await self.kill()
        stacks = "\n".join(str(line.get("message", line)) for line in self.log_lines[printed:])
        raise StopHung(f"still running {within:.0f} s after SIGTERM; where it waited:\n{stacks}")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_service(
    module: str,
    env: Mapping[str, str],
    *,
    within: float = 30.0,
    echo_log: bool = False,
    python: str = sys.executable,
) -> ServiceProcess:
    """Runs `python -m module` with `env` added and returns once it logs `serving`.
    With `echo_log`, the service's log lines are passed on to this process's stderr."""
    python_path = os.pathsep.join(p for p in sys.path if p)
    process = await asyncio.create_subprocess_exec(
        python,
        "-m",
        module,
        env={**os.environ, "PYTHONPATH": python_path, **env},
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        cwd=os.environ.get("TEST_TMPDIR", str(REPO)),
    )
    assert process.stderr is not None
    service = ServiceProcess(process=process, port=0)
    serving: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def read_log() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            if echo_log:
                sys.stderr.write(raw.decode(errors="replace"))
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"message": raw.decode(errors="replace").rstrip()}
            await service._add_line(line)
            if line.get("message") == "serving" and not serving.done():
                serving.set_result(int(str(line["port"])))
        if not serving.done():
            serving.set_exception(
                RuntimeError(f"{module} exited before serving: " + service.last_lines())
            )

    service._reader = asyncio.create_task(read_log())
    try:
        service.port = await asyncio.wait_for(serving, within)
    except BaseException:
        await service.kill()
        raise
    return service
