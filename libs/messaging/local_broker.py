"""A private RabbitMQ node: its own ports, data directory and Erlang cookie, started from the
Debian rabbitmq-server package. For local runs on a machine with no broker running, and for
tests that must restart a broker without disturbing anyone else's."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from libs.runtime.server import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


class LocalBrokerError(RuntimeError):
    pass


class LocalBroker:
    def __init__(self, directory: Path, *, port: int = 0, name: str = "emporium") -> None:
        if not SERVER.exists():
            raise LocalBrokerError(
                f"{SERVER} not found: install Debian's rabbitmq-server (tools/setup does)"
            )
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.node = f"{name}-{self.port}@localhost"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        base = self.directory
        base.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq-env.conf").touch()
        return {
            **os.environ,
            "HOME": str(base),  # the node's and rabbitmqctl's Erlang cookie live here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        }

    async def start(self) -> None:
        """Starts the node and returns once it accepts AMQP connections (90 s at most)."""
        self._process = await asyncio.to_thread(self._spawn)
        limit = 90.0
        deadline = time.monotonic() + limit
        while not await _accepting(self.port):
            if self._process.poll() is not None:
                raise LocalBrokerError(
                    f"RabbitMQ node {self.node} exited with {self._process.returncode}; "
                    f"see {self.directory / 'server.log'}"
                )
            if time.monotonic() > deadline:
                raise LocalBrokerError(f"RabbitMQ node {self.node} not up after {limit:g}s")
            await asyncio.sleep(0.2)

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = self._env()
        with open(self.directory / "server.log", "ab") as log:
            return subprocess.Popen(
                [str(SERVER)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30.0)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)
        # epmd may outlive the node; it is shared and harmless.

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [str(CTL), "-n", self.node, *args], env=self._env(), capture_output=True, text=True
        )
        if result.returncode != 0:
            raise LocalBrokerError(f"rabbitmqctl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


async def _accepting(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
