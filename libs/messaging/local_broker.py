"""Private RabbitMQ nodes: each with its own ports, data directory and Erlang cookie, started
from the Debian rabbitmq-server package. For local runs on a machine with no broker running,
for tests that must restart a broker without disturbing anyone else's, and (LocalCluster) for
tests that stop one node of a three-node cluster."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from libs.server.grpc_app import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
# util-linux: the node gets SIGTERM (a clean stop) if whoever started it dies without
# stopping it (a test run killed on a timeout), instead of living on with its ports.
SETPRIV = Path("/usr/bin/setpriv")

log = logging.getLogger("emporium.messaging.local_broker")


class LocalBrokerError(RuntimeError):
    pass


class LocalBroker:
    def __init__(
        self,
        directory: Path,
        *,
        port: int = 0,
        name: str = "emporium",
        cookie: str | None = None,
        schedulers: int = 1,
    ) -> None:
        """`cookie`: the Erlang cookie; nodes of one cluster share it (default: the one in
        `directory`, made on first start). `schedulers`: the Erlang scheduler threads that run
        the node's work (`+S`). RabbitMQ's runtime guide sizes them to the CPU the node may use,
        and a private node shares the machine with the services it serves: with one per core
        (Erlang's default) on two cores beside the fleet, the node spent about a fifth more CPU
        per order, its schedulers waking each other (bench/README.md, `orders`)."""
        if not SERVER.exists():
            raise LocalBrokerError(
                f"{SERVER} not found: install Debian's rabbitmq-server (tools/setup does)"
            )
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.node = f"{name}-{self.port}@localhost"
        self._cookie = cookie
        self._schedulers = schedulers
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        base = self.directory
        base.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq-env.conf").touch()
        cookie = base / ".erlang.cookie"
        if self._cookie is not None and not cookie.exists():
            cookie.write_text(self._cookie)
            cookie.chmod(0o400)  # Erlang refuses a cookie others can read
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
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"+S {self._schedulers}:{self._schedulers}",
        }

    async def start(self) -> None:
        """Starts the node and returns once it accepts AMQP connections (90 s at most)."""
        # Spawned from this thread (not a worker thread): the parent-death signal follows the
        # thread that forked.
        self._process = self._spawn()
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
            guard = [str(SETPRIV), "--pdeathsig", "TERM", "--"] if SETPRIV.exists() else []
            return subprocess.Popen(
                [*guard, str(SERVER)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def process_group(self) -> int:
        """The node's process group (its own session): beam.smp and its helpers, whose CPU a
        benchmark counts."""
        if self._process is None:
            raise LocalBrokerError(f"RabbitMQ node {self.node} is not started")
        return self._process.pid

    async def kill(self) -> None:
        """Ends the node at once (SIGKILL), as a crash or a pulled plug would."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait)

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

    async def ctl(self, *args: str) -> str:
        """Runs `rabbitmqctl -n <this node> args`; its output, or LocalBrokerError."""
        process = await asyncio.create_subprocess_exec(
            str(CTL),
            "-n",
            self.node,
            *args,
            env=self._env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise LocalBrokerError(
                f"rabbitmqctl -n {self.node} {' '.join(args)}: {err.decode().strip()}"
            )
        return out.decode()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


async def _accepting(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


class LocalCluster:
    """`size` private nodes clustered together (a shared Erlang cookie, `join_cluster`), so
    quorum queues and streams are replicated across them. `url` lists every node's address,
    as the kit takes a cluster."""

    def __init__(self, directory: Path, *, size: int = 3, name: str = "emporium-cluster") -> None:
        if size < 1:
            raise LocalBrokerError(f"a cluster needs at least one node, not {size}")
        cookie = secrets.token_hex(16).upper()
        self.nodes = [
            LocalBroker(directory / f"node{i}", name=f"{name}{i}", cookie=cookie)
            for i in range(1, size + 1)
        ]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    async def start(self) -> None:
        """Starts every node, then joins the others to the first; returns once all run as
        one cluster."""
        log.info("starting %d RabbitMQ nodes", len(self.nodes))
        await asyncio.gather(*(node.start() for node in self.nodes))
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            log.info("joining %s to %s", node.node, seed.node)
            await node.ctl("stop_app")
            await node.ctl("join_cluster", seed.node)
            await node.ctl("start_app")
        await seed.ctl("await_online_nodes", str(len(self.nodes)))
        log.info("cluster of %d nodes up: %s", len(self.nodes), self.url)

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()

    async def add_vhost(self, name: str) -> str:
        """Creates virtual host `name` for the guest user; returns its URL on every node."""
        node = self._running()
        await node.ctl("add_vhost", name)
        await node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return ",".join(f"{each.url}{name}" for each in self.nodes)

    def _running(self) -> LocalBroker:
        running = next((node for node in self.nodes if node.running), None)
        if running is None:
            raise LocalBrokerError("no node of the cluster is running")
        return running

    async def leader(self, queue: str, vhost: str = "/") -> LocalBroker:
        """The node that leads quorum queue (or stream) `queue`, as a running node sees it."""
        listing = json.loads(
            await self._running().ctl(
                "list_queues", "-p", vhost, "name", "leader", "--formatter", "json", "--quiet"
            )
        )
        leaders = {row["name"]: row["leader"] for row in listing}
        if queue not in leaders:
            raise LocalBrokerError(f"no queue {queue!r} in vhost {vhost!r}")
        for node in self.nodes:
            if node.node == leaders[queue]:
                return node
        raise LocalBrokerError(f"{queue!r} is led by {leaders[queue]!r}, not a node of ours")

    async def members(self, queue: str, vhost: str = "/") -> list[str]:
        """The nodes holding a replica of quorum queue (or stream) `queue`."""
        listing = json.loads(
            await self._running().ctl(
                "list_queues", "-p", vhost, "name", "members", "--formatter", "json", "--quiet"
            )
        )
        for row in listing:
            if row["name"] == queue:
                return sorted(str(member) for member in row["members"])
        raise LocalBrokerError(f"no queue {queue!r} in vhost {vhost!r}")
