"""A local Prometheus for tools/run (EMPORIUM_OBSERVE=1): Debian's `prometheus` binary scraping
each service's metrics endpoint, with the same alerting rules as the cluster, its data under
var/prometheus. Its web UI is the local view (Grafana is not packaged by Debian or PyPI)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import yaml

from tools.monitoring.definition import rule_groups

BINARY = "prometheus"


class LocalPrometheusError(RuntimeError):
    pass


class LocalPrometheus:
    def __init__(self, directory: Path, targets: Mapping[str, str], port: int = 9090) -> None:
        """`targets`: service name -> host:port of its metrics endpoint."""
        binary = shutil.which(BINARY)
        if binary is None:
            raise LocalPrometheusError(
                "prometheus not found: install Debian's prometheus package (tools/setup does)"
            )
        self.binary = binary
        self.directory = directory.resolve()
        self.targets = dict(targets)
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        rules = self.directory / "emporium.rules.yml"
        rules.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "15s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": [target]}]}
                for name, target in self.targets.items()
            ],
        }
        path = self.directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    async def start(self, within: float = 30.0) -> None:
        """Starts Prometheus and returns once it answers /-/ready."""
        self._process = await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + within
        while not await asyncio.to_thread(self._ready):
            if self._process.poll() is not None:
                raise LocalPrometheusError(
                    f"prometheus exited with {self._process.returncode}; "
                    f"see {self.directory / 'prometheus.log'}"
                )
            if time.monotonic() > deadline:
                raise LocalPrometheusError(f"prometheus not ready after {within:g}s")
            await asyncio.sleep(0.2)

    def _spawn(self) -> subprocess.Popen[bytes]:
        config = self.write_config()
        with open(self.directory / "prometheus.log", "ab") as log:
            return subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=2d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    async def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
