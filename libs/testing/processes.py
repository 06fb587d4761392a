"""Services as real processes on loopback: start one, wait for its `serving` log line, stop it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    process: asyncio.subprocess.Process
    port: int
    log_lines: list[dict[str, object]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def terminate(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.process.wait()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_service(
    module: str, env: Mapping[str, str], *, timeout: float = 30.0
) -> ServiceProcess:
    """Runs `python -m module` with `env` added and returns once it logs `serving`."""
    python_path = os.pathsep.join(p for p in sys.path if p)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module,
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
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"message": raw.decode(errors="replace").rstrip()}
            service.log_lines.append(line)
            if line.get("message") == "serving" and not serving.done():
                serving.set_result(int(str(line["port"])))
        if not serving.done():
            serving.set_exception(RuntimeError(
                f"{module} exited before serving: "
                + "\n".join(str(line) for line in service.log_lines[-20:])))

    service._reader = asyncio.create_task(read_log())
    try:
        service.port = await asyncio.wait_for(serving, timeout)
    except BaseException:
        await service.kill()
        raise
    return service
