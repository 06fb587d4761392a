"""Entry point of every pytest_test target: runs pytest on the files given as arguments."""

import os
import sys

import pytest

if __name__ == "__main__":
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
