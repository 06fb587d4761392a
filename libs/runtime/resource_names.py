"""AIP-122 resource names: `<collection>/{id}` checked and taken apart in one place."""

from __future__ import annotations

from libs.runtime.errors import FieldViolation, invalid_argument
from libs.runtime.reasons import SharedReason


def resource_id(name: str, pattern: str, field_path: str = "name") -> str:
    """The id in `name`, which must look like `pattern` (e.g. `orders/{order}`); otherwise
    INVALID_ARGUMENT `INVALID_RESOURCE_NAME` naming `field_path`."""
    prefix = pattern.split("{", 1)[0]
    found = name.removeprefix(prefix)
    if not name.startswith(prefix) or not found or "/" in found:
        raise invalid_argument(
            SharedReason.INVALID_RESOURCE_NAME,
            f"{name!r} is not {pattern}",
            [
                FieldViolation(
                    field_path, f"must look like {pattern}", SharedReason.INVALID_RESOURCE_NAME
                )
            ],
        )
    return found
