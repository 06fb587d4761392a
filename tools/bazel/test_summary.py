"""Adds up the pytest results of every Bazel test target (their JUnit XML) into one line:
`tests: N passed, N failed, N skipped`."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main() -> int:
    logs = Path(sys.argv[1])
    passed = failed = skipped = 0
    for report in sorted(logs.rglob("test.xml")):
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
                print(f"    FAILED {case.get('classname')}::{case.get('name')}")
            elif case.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
