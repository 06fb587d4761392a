"""Fails when a test file is in no Bazel test target: `bazel test //...` would never run it,
and nothing else would say so. Run by tools/test before the Bazel step.

    python3 tools/bazel/unlisted_tests.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Run by tools/test outside Bazel (they need root and the container engine's storage).
OUTSIDE_BAZEL = ("tools/commands/image/tests/",)


def test_files() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "*test_*.py"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    return {
        path
        for path in listed
        if "/tests/" in f"/{path}" and Path(path).name.startswith("test_")
        if not path.startswith(OUTSIDE_BAZEL)
    }


def bazel_test_sources() -> set[str]:
    labels = subprocess.run(
        ["bazel", "query", "labels(srcs, tests(//...))", "--output=label"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    # //services/orders:tests/test_api.py -> services/orders/tests/test_api.py
    return {label.removeprefix("//").replace(":", "/", 1).lstrip("/") for label in labels}


def main() -> int:
    unlisted = sorted(test_files() - bazel_test_sources())
    for path in unlisted:
        print(f"{path}: in no Bazel test target (add it to its BUILD.bazel's pytest_test srcs)")
    return 1 if unlisted else 0


if __name__ == "__main__":
    sys.exit(main())
