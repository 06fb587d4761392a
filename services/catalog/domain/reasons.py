"""The error reasons catalog returns (clients switch on them), as plain constants: the values
of `emporium.catalog.v1.ErrorReason` (proto/emporium/catalog/v1/error_reason.proto). Plain, so
the domain imports no generated code; tests/errors proves the two lists equal."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"
    PRODUCT_EXISTS = "PRODUCT_EXISTS"
    SKU_TAKEN = "SKU_TAKEN"
    CURRENCY_NOT_SUPPORTED = "CURRENCY_NOT_SUPPORTED"
    ETAG_MISMATCH = "ETAG_MISMATCH"
    INVALID_FIELD_MASK = "INVALID_FIELD_MASK"
    INVALID_FILTER = "INVALID_FILTER"
    INVALID_ORDER_BY = "INVALID_ORDER_BY"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    CONCURRENT_MODIFICATION = "CONCURRENT_MODIFICATION"
