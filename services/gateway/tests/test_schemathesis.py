"""Acceptance 2: schemathesis generates requests for every operation of /openapi.json (with an
admin's token, so every operation is reachable) and checks that none gets a 5xx and that every
response matches the documented schema and content type."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from services.gateway.app import EXPOSED
from services.gateway.routes import build_routes
from services.gateway.tests.fleet import running_fleet

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
UNLIMITED: dict[str, Any] = {
    "rate_read_per_second": 100_000.0,
    "rate_read_burst": 100_000,
    "rate_write_per_second": 100_000.0,
    "rate_write_burst": 100_000,
}


async def test_openapi_operations_hold_their_schema(amqp_url: str, tmp_path: Path) -> None:
    async with running_fleet(tmp_path, amqp_url, **UNLIMITED) as fleet:
        await fleet.stock()
        token = await fleet.token("admin")
        run = await asyncio.create_subprocess_exec(
            SCHEMATHESIS,
            "run",
            f"{fleet.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "15",
            "--workers",
            "2",
            "--generation-database",
            "none",
            "--warnings",
            "off",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await run.communicate()
    report = output.decode()
    assert run.returncode == 0, report
    operations = len(build_routes(EXPOSED)[0])
    assert f"Selected: {operations}/{operations}" in report, report
    assert "No issues found" in report, report
