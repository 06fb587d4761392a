"""Input validation from the contracts' protovalidate (buf.validate) annotations.

RequestValidation checks every unary and server-streaming request before the handler runs and
answers INVALID_ARGUMENT with a BadRequest listing every violated field. Streamed requests are
checked by the handler, item by item, with `check` (so one bad item need not end the stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import protovalidate
from google.protobuf.message import Message

from libs.runtime.errors import DomainError, FieldViolation, invalid_argument
from libs.runtime.middleware import Behavior, Context, MethodInfo, before_each_call
from libs.runtime.reasons import SharedReason

_validator = protovalidate.Validator()


def violations_of(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every rule `message` breaks, with field paths like `product.labels["Key"]`."""
    return [
        FieldViolation(
            field=_join(prefix, _path_text(violation.proto.field)),
            description=violation.proto.message,
            reason=violation.proto.rule_id,
        )
        for violation in _validator.collect_violations(message)
    ]


def invalid_request(violations: Sequence[FieldViolation]) -> DomainError:
    fields = ", ".join(dict.fromkeys(v.field for v in violations))  # a field breaking two rules
    return invalid_argument(SharedReason.FIELD_VIOLATION, f"invalid request: {fields}", violations)


def check(message: Message, prefix: str = "") -> None:
    """Raises INVALID_ARGUMENT (with every violation) when `message` breaks its rules."""
    violations = violations_of(message, prefix)
    if violations:
        raise invalid_request(violations)


class RequestValidation:
    """Middleware; sits inside ErrorTranslation so its DomainError becomes a rich status."""

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        if method.request_streaming:
            return behavior
        return before_each_call(method, behavior, _check_request)


async def _check_request(request: Any, context: Context) -> None:
    check(request)


def _path_text(path: Any) -> str:
    parts: list[str] = []
    for element in path.elements:
        name = element.field_name
        subscript = element.subscript
        if subscript is None:
            parts.append(name)
        elif subscript.field == "index":
            parts.append(f"{name}[{subscript.value}]")
        else:
            parts.append(f'{name}["{subscript.value}"]')
    return ".".join(parts)


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix and path else prefix or path


__all__ = ["RequestValidation", "check", "invalid_request", "violations_of"]
