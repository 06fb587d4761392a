"""The front door as a new user meets it (acceptance 1): the fleet as processes over mTLS,
started the way `tools/run` starts it, and the curl walk-through `tools/run` prints, run as
printed: stock as staff, sign up, page through products, order with an Idempotency-Key,
watch it over Server-Sent Events until CONFIRMED, and read it with `?view=FULL`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tools.commands.run.fleet import running_processes
from tools.commands.run.walkthrough import curl_walkthrough

SAGA = ["ORDER_STATE_PENDING_PAYMENT", "ORDER_STATE_AUTHORIZED", "ORDER_STATE_CONFIRMED"]


async def test_curl_walkthrough(tmp_path: Path, amqp_url: str) -> None:
    async with running_processes(tmp_path, amqp_url) as running:
        secrets = tmp_path / "identity" / "secrets"
        script = "\n".join(
            ["set -euo pipefail", *curl_walkthrough(running["gateway"].address, secrets)]
        )
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(shell.communicate(), 60)
    output = stdout.decode()
    assert shell.returncode == 0, stderr.decode() + output
    assert '"name": "users/ann"' in output  # signed up
    assert 'rel="next"' in output  # products, page by page
    events = [line for line in output.splitlines() if line.startswith("event: ")]
    assert events[-1] == "event: end"
    # The watch starts from the order as it is then (PENDING_PAYMENT, or further on if the saga
    # was quicker than curl) and follows it, never backwards, until CONFIRMED.
    states = [
        json.loads(line.removeprefix("data: "))["state"]
        for line in output.splitlines()
        if line.startswith("data: ") and '"state"' in line
    ]
    assert states[-1] == "ORDER_STATE_CONFIRMED"
    assert states == sorted(states, key=SAGA.index), states
    full = output.strip().splitlines()[-1]
    assert '"productDetails"' in full and '"products/mug-01"' in full
