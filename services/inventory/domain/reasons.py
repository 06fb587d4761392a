"""The error reasons inventory returns (clients switch on them), as plain constants: the values
of `emporium.inventory.v1.ErrorReason` (proto/emporium/inventory/v1/error_reason.proto). Plain, so
the domain imports no generated code; tests/errors proves the two lists equal."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    ITEM_NOT_FOUND = "ITEM_NOT_FOUND"
    ITEM_NOT_STOCKED = "ITEM_NOT_STOCKED"
    DUPLICATE_ITEM = "DUPLICATE_ITEM"
    INSUFFICIENT_STOCK = "INSUFFICIENT_STOCK"
    STOCK_BELOW_RESERVED = "STOCK_BELOW_RESERVED"
    RESERVATION_NOT_FOUND = "RESERVATION_NOT_FOUND"
    RESERVATION_NOT_PENDING = "RESERVATION_NOT_PENDING"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
