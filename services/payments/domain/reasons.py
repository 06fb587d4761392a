"""The error reasons payments returns (clients switch on them), as plain constants: the values
of `emporium.payments.v1.ErrorReason` (proto/emporium/payments/v1/error_reason.proto). Plain, so
the domain imports no generated code; tests/errors proves the two lists equal."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
    PAYMENT_NOT_CAPTURABLE = "PAYMENT_NOT_CAPTURABLE"
    PAYMENT_NOT_REFUNDABLE = "PAYMENT_NOT_REFUNDABLE"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    NOT_THE_ORDERS_PAYMENT = "NOT_THE_ORDERS_PAYMENT"
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
