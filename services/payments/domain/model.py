"""Payment entities."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from libs.money import Money

PAYMENT_PREFIX = "payments/"


class PaymentState(enum.Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"


@dataclass(frozen=True)
class Payment:
    payment_id: str  # the order id: one payment per order
    order: str
    customer: str
    amount: Money
    payment_method: str
    state: PaymentState
    create_time: datetime
    update_time: datetime
    decline_reason: str = ""
    provider_reference: str = ""

    @property
    def name(self) -> str:
        return PAYMENT_PREFIX + self.payment_id


@dataclass(frozen=True)
class ChargeRequest:
    order: str
    customer: str
    amount: Money
    payment_method: str

    @property
    def payment_id(self) -> str:
        return self.order.removeprefix("orders/")


@dataclass(frozen=True)
class ChargeOutcome:
    approved: bool
    reference: str
    decline_reason: str = ""
