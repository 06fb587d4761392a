"""The error reasons orders returns (clients switch on them), as plain constants: the values
of `emporium.orders.v1.ErrorReason` (proto/emporium/orders/v1/error_reason.proto). Plain, so
the domain imports no generated code; tests/errors proves the two lists equal."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
    ORDER_CONFIRMED = "ORDER_CONFIRMED"
    DUPLICATE_PRODUCT = "DUPLICATE_PRODUCT"
    MIXED_CURRENCIES = "MIXED_CURRENCIES"
    PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"
    INSUFFICIENT_STOCK = "INSUFFICIENT_STOCK"
    RESERVATION_NOT_PENDING = "RESERVATION_NOT_PENDING"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    CONCURRENT_MODIFICATION = "CONCURRENT_MODIFICATION"
