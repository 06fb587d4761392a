"""requirements-runtime.lock, what the service image installs: the same pins as
requirements.lock, complete for the image's Python (Debian's), and providing every third-party
module services/ and libs/ import outside their tests."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from tools.commands.contracts.check import REPO
from tools.commands.image.build import IMAGE_PYTHON, lock_pins, normalized

RUNTIME = REPO / "requirements-runtime.lock"
IMAGE_ENVIRONMENT: dict[str, str] = {
    **{key: str(value) for key, value in default_environment().items()},
    "python_full_version": IMAGE_PYTHON,
    "python_version": ".".join(IMAGE_PYTHON.split(".")[:2]),
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_machine": "x86_64",
}


def _roots() -> list[Requirement]:
    lines = (REPO / "requirements-runtime.in").read_text().splitlines()
    return [Requirement(line.split("#", 1)[0]) for line in lines if line.split("#", 1)[0].strip()]


def test_runtime_pins_are_the_development_pins() -> None:
    development = lock_pins(REPO / "requirements.lock")
    runtime = lock_pins(RUNTIME)
    assert runtime
    different = {name: pin for name, pin in runtime.items() if development.get(name) != pin}
    assert not different, f"not pinned the same in requirements.lock: {different}"


def test_runtime_lock_is_complete_for_the_image_python() -> None:
    """Every requirement of every package (with the extras asked for) is pinned, with markers
    evaluated as on the image's Python (e.g. redis needs async-timeout before 3.11.3)."""
    runtime = lock_pins(RUNTIME)
    missing = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = _roots()
    while pending:
        requirement = pending.pop()
        key = (normalized(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        if key[0] not in runtime:
            missing.add(requirement.name)
            continue
        for text in importlib.metadata.requires(requirement.name) or []:
            child = Requirement(text)
            extras = ["", *sorted(requirement.extras)]
            if child.marker is None or any(
                child.marker.evaluate({**IMAGE_ENVIRONMENT, "extra": extra}) for extra in extras
            ):
                pending.append(child)
    assert not missing, f"add to requirements-runtime.lock: {sorted(missing)}"
    unused = set(runtime) - {name for name, _ in seen}
    assert not unused, f"nothing needs these in the image: {sorted(unused)}"


def _imports(root: Path) -> set[str]:
    modules = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if "tests" in parts or parts[:2] == ("libs", "testing") or path.name == "conftest.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_runtime_lock_provides_every_imported_module() -> None:
    first_party = {"libs", "services", "emporium", "tools"}
    third_party = (
        (_imports(REPO / "services") | _imports(REPO / "libs"))
        - set(sys.stdlib_module_names)
        - first_party
    )
    assert {"grpc", "sqlalchemy", "aio_pika"} <= third_party
    runtime = set(lock_pins(RUNTIME))
    providers = importlib.metadata.packages_distributions()
    unprovided = {
        module: providers.get(module)
        for module in third_party
        if not any(normalized(d) in runtime for d in providers.get(module, []))
    }
    assert not unprovided, f"imported but not in requirements-runtime.lock: {unprovided}"
