"""Every error reason the code can return is declared in the contracts: each service's in its
domain's `ErrorReason` enum (`proto/emporium/<domain>/v1/error_reason.proto`), the kit's and the
gateway's in `emporium.errors.v1.ErrorReason`.

The code is read, not run: every reason written where an error is made (DomainError, the kit's
`invalid_argument` / `invalid_field` / `not_found`, a BadRequest `FieldViolation`, the gateway's
`Problem`, and any function that hands its `reason` parameter to one of them) is collected, as
a literal, a module constant or a `Reason.X` member. Reading the code sees paths no test
reaches; a reason computed at run time (an upstream's, passed through) is not the code's own.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pytest
from google.protobuf.descriptor import EnumDescriptor

from libs.runtime.reasons import SharedReason

REPO = Path(__file__).resolve().parents[2]
# The calls that make an error, and the position of their reason argument (None: keyword only).
ERROR_MAKERS: dict[str, int | None] = {
    "DomainError": 1,
    "invalid_argument": 0,
    "invalid_field": 2,
    "not_found": 1,
    "FieldViolation": 2,
    "Problem": None,
}
SHARED = "emporium.errors.v1"
DOMAINS = ["errors", "catalog", "identity", "inventory", "orders", "payments"]


@dataclass(frozen=True)
class Use:
    reason: str
    where: str  # path:line


def contract_enum(package: str) -> EnumDescriptor:
    module = importlib.import_module(f"{package}.error_reason_pb2")
    enum: EnumDescriptor = module.DESCRIPTOR.enum_types_by_name["ErrorReason"]
    return enum


def declared_in(package: str) -> set[str]:
    return {value.name for value in contract_enum(package).values if value.number != 0}


def sources() -> Iterator[Path]:
    for root in ("services", "libs"):
        for path in sorted((REPO / root).rglob("*.py")):
            if "tests" not in path.relative_to(REPO).parts:
                yield path


def module_constants(tree: ast.Module) -> dict[str, str]:
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            constants.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})
    return constants


def _callee(call: ast.Call) -> str:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return call.func.id if isinstance(call.func, ast.Name) else ""


def _reason_arguments(call: ast.Call, makers: dict[str, int | None]) -> list[ast.expr]:
    if _callee(call) not in makers:
        return []
    position = makers[_callee(call)]
    found = [k.value for k in call.keywords if k.arg == "reason"]
    if position is not None and len(call.args) > position:
        found.append(call.args[position])
    return found


def error_makers(tree: ast.Module) -> dict[str, int | None]:
    """ERROR_MAKERS plus this module's functions that pass their `reason` parameter on to one."""
    makers = dict(ERROR_MAKERS)
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    changed = True
    while changed:
        changed = False
        for function in functions:
            parameters = [a.arg for a in function.args.posonlyargs + function.args.args]
            if function.name in makers or "reason" not in parameters:
                continue
            hands_on = any(
                isinstance(argument, ast.Name) and argument.id == "reason"
                for call in ast.walk(function)
                if isinstance(call, ast.Call) and _callee(call) in makers
                for argument in _reason_arguments(call, makers)
            )
            if hands_on:
                skip = 1 if parameters[0] in ("self", "cls") else 0
                makers[function.name] = parameters.index("reason") - skip
                changed = True
    return makers


def reasons_used(path: Path, kit_constants: dict[str, str]) -> Iterator[Use]:
    tree = ast.parse(path.read_text(), str(path))
    constants = {**kit_constants, **module_constants(tree)}
    makers = error_makers(tree)
    where = path.relative_to(REPO)
    for node in ast.walk(tree):
        # A maker's default reason (`reason: str = "INVALID_FIELD"`).
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in makers:
            arguments = node.args.posonlyargs + node.args.args
            defaults = dict(
                zip([a.arg for a in arguments][::-1], node.args.defaults[::-1], strict=False)
            )
            default = defaults.get("reason")
            if isinstance(default, ast.Constant) and isinstance(default.value, str):
                yield Use(default.value, f"{where}:{default.lineno}")
        if not isinstance(node, ast.Call):
            continue
        for argument in _reason_arguments(node, makers):
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                yield Use(argument.value, f"{where}:{argument.lineno}")
            elif isinstance(argument, ast.Name) and argument.id in constants:
                yield Use(constants[argument.id], f"{where}:{argument.lineno}")
            elif isinstance(argument, ast.Attribute) and argument.attr.isupper():
                yield Use(argument.attr, f"{where}:{argument.lineno}")  # Reason.X


def allowed_for(path: Path) -> set[str]:
    """A service may return its domain's reasons and the shared ones; the kit and the gateway
    (which has no contract of its own) the shared ones."""
    parts = path.relative_to(REPO).parts
    allowed = declared_in(SHARED)
    if (
        parts[0] == "services"
        and (REPO / "proto" / "emporium" / parts[1] / "v1" / "error_reason.proto").exists()
    ):
        allowed |= declared_in(f"emporium.{parts[1]}.v1")
    return allowed


def test_every_reason_the_code_returns_is_declared_in_its_contract() -> None:
    kit_constants = {member.name: member.value for member in SharedReason}
    undeclared = [
        f"{use.where}: {use.reason}"
        for path in sources()
        for use in reasons_used(path, kit_constants)
        if use.reason not in allowed_for(path)
    ]
    assert undeclared == []


def test_the_scan_finds_reasons_in_every_form() -> None:
    """The scan itself: a literal, a constant, a Reason member, a helper's parameter and a
    default all count, so an undeclared one cannot hide in any of them."""
    tree_source = """
LIMIT = "OVER_LIMIT"
def refuse(message, reason="DEFAULT_REASON"):
    return DomainError(ErrorKind.ABORTED, reason, message)
def check():
    raise DomainError(ErrorKind.NOT_FOUND, "LITERAL_REASON", "x")
    raise invalid_field("a.b", "bad", reason=LIMIT)
    raise refuse("no", "HELPER_REASON")
    raise not_found("x", Reason.MEMBER_REASON)
"""
    scratch = REPO / "build" / "reason_scan_probe.py"
    scratch.parent.mkdir(exist_ok=True)
    scratch.write_text(tree_source)
    try:
        found = {use.reason for use in reasons_used(scratch, {})}
    finally:
        scratch.unlink()
    assert found == {
        "OVER_LIMIT",
        "DEFAULT_REASON",
        "LITERAL_REASON",
        "HELPER_REASON",
        "MEMBER_REASON",
    }


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domains_reason_constants_are_its_contracts_enum(domain: str) -> None:
    """The plain constants the code uses and the contract's enum list the same reasons."""
    if domain == "errors":
        constants: type[StrEnum] = SharedReason
    else:
        constants = importlib.import_module(f"services.{domain}.domain.reasons").Reason
    assert {member.value for member in constants} == declared_in(f"emporium.{domain}.v1")
    assert all(member.name == member.value for member in constants)
