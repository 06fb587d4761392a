"""Which gRPC methods each service's code calls, read from its source: a call is
`<expr>.<Method>(...)` in a module that names `<Service>Stub` (services/<name>, outside tests),
and every method of each service the gateway exposes (services/gateway/app.py `EXPOSED`, whose
routes dispatch by name). The mesh's network edges come from here, and the drift test holds the
services' policies to it: a grant to a fleet service that no code of it uses is an error."""

from __future__ import annotations

import ast
from pathlib import Path

from google.protobuf.descriptor import ServiceDescriptor

REPO = Path(__file__).resolve().parents[2]


def _source_files(service: str) -> list[Path]:
    root = REPO / "services" / service
    return [
        path
        for path in sorted(root.rglob("*.py"))
        if "tests" not in path.relative_to(root).parts and not path.name.startswith("test_")
    ]


def called_methods(
    caller: str, services: dict[str, tuple[ServiceDescriptor, ...]]
) -> set[tuple[str, str, str]]:
    """(callee, gRPC service name, method) for each call in services/<caller>'s code."""
    found: set[tuple[str, str, str]] = set()
    for path in _source_files(caller):
        tree = ast.parse(path.read_text())
        names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        called = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        for callee, descriptors in services.items():
            for descriptor in descriptors:
                if f"{descriptor.name}Stub" not in names:
                    continue
                found |= {
                    (callee, descriptor.name, method.name)
                    for method in descriptor.methods
                    if method.name in called
                }
    return found


def gateway_calls(services: dict[str, tuple[ServiceDescriptor, ...]]) -> set[tuple[str, str, str]]:
    """Every method of the services the gateway exposes, and the calls of its own code."""
    from services.gateway.app import EXPOSED

    exposed = {exposed.upstream for exposed in EXPOSED}
    found = {
        (callee, descriptor.name, method.name)
        for callee in exposed
        for descriptor in services.get(callee, ())
        for method in descriptor.methods
    }
    return found | called_methods("gateway", services)


def fleet_calls(
    callers: list[str], services: dict[str, tuple[ServiceDescriptor, ...]]
) -> dict[str, set[tuple[str, str, str]]]:
    """caller -> the (callee, service, method) its code calls."""
    return {
        caller: gateway_calls(services) if caller == "gateway" else called_methods(caller, services)
        for caller in callers
    }
