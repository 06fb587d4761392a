"""Entry point of every pytest_test target: runs pytest on the files given as arguments."""

from __future__ import annotations

import os
import signal
import sys
import types

import pytest

from libs.runtime.stacks import print_stacks

# Bazel kills a target that outlives its timeout and keeps only what it printed: a hung test
# left nothing to go on. Shortly before that, print where every thread and every asyncio task
# is waiting, so the log names the hang.
DIAGNOSE_BEFORE_TIMEOUT_SECONDS = 20
# pytest captures fd 2 while a test runs; the diagnosis goes to the log's own stderr.
_LOG = os.fdopen(os.dup(2), "w")


def _print_where_everything_waits(signum: int, frame: types.FrameType | None) -> None:
    print("\n==== still running near the Bazel timeout ====", file=_LOG, flush=True)
    # The signal runs on the main thread, inside the loop: its tasks are the running loop's.
    print_stacks(_LOG)


def _diagnose_a_hang() -> None:
    timeout = int(os.environ.get("TEST_TIMEOUT", "0"))
    if timeout > 2 * DIAGNOSE_BEFORE_TIMEOUT_SECONDS:
        signal.signal(signal.SIGALRM, _print_where_everything_waits)
        signal.alarm(timeout - DIAGNOSE_BEFORE_TIMEOUT_SECONDS)


if __name__ == "__main__":
    _diagnose_a_hang()
    options = [
        "-p",
        "libs.testing.fixtures",
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-q",
    ]
    report = os.environ.get("XML_OUTPUT_FILE")
    if report:
        options.append(f"--junitxml={report}")
    sys.exit(pytest.main(options + sys.argv[1:]))
