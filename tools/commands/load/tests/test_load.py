"""tools/load (issue 15, acceptance 4 in short): a headless Locust run of the shoppers and the
gRPC user against the fleet as tools/run starts it, with a summary, the HTML report and the
CSV, and no failed request; and a clear refusal when nothing answers at --host."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.runtime.processes import ServiceProcess
from libs.server.grpc_app import free_port
from tools.commands.run.fleet import running_processes


async def load(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.commands.load",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, output.decode()


@pytest.fixture
async def fleet(tmp_path: Path, amqp_url: str) -> AsyncIterator[dict[str, ServiceProcess]]:
    async with running_processes(tmp_path, amqp_url) as running:
        yield running


async def test_a_short_headless_run_has_no_failures(
    fleet: dict[str, ServiceProcess], tmp_path: Path
) -> None:
    out = tmp_path / "load"
    code, output = await load(
        "--var", str(tmp_path), "--users", "6", "--spawn-rate", "6", "--duration", "8s",
        "--grpc", "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    assert "OK: " in output and "Summary:" in output
    assert (out / "report.html").stat().st_size > 10_000
    with (out / "stats_stats.csv").open(newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert int(rows["/v1/products"]["Request Count"]) > 0  # the shoppers, through the gateway
    grpc_calls = sum(int(r["Request Count"]) for n, r in rows.items() if n.startswith("catalog/"))
    assert grpc_calls > 0  # the gRPC user, straight to catalog


async def test_nothing_at_the_host_is_refused_naming_it(tmp_path: Path) -> None:
    host = f"http://127.0.0.1:{free_port()}"
    code, output = await load("--host", host, "--var", str(tmp_path), "--duration", "1s")
    assert code != 0
    assert f"--host {host} does not answer" in output
