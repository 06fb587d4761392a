"""Payment entities: one payment per order, authorized, then captured, or voided or refunded."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from libs.money import Money

PAYMENT_PREFIX = "payments/"


class PaymentState(enum.Enum):
    PENDING = "PENDING"  # authorization asked for; the provider's answer is not recorded yet
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    DECLINED = "DECLINED"
    VOIDED = "VOIDED"
    REFUNDED = "REFUNDED"

    @property
    def terminal(self) -> bool:
        return self in (PaymentState.DECLINED, PaymentState.VOIDED, PaymentState.REFUNDED)


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
    void_reason: str = ""
    # Authorizations sent to the provider: after the first, the provider is asked for the
    # outcome of the key before another is sent (an earlier one may have got through).
    attempts: int = 0

    @property
    def name(self) -> str:
        return PAYMENT_PREFIX + self.payment_id

    @property
    def key(self) -> str:
        """The provider idempotency key of this payment's operations."""
        return self.payment_id


@dataclass(frozen=True)
class PaymentRequest:
    """What orders asks for: authorize (or, for a void heard of first, record) this payment."""

    order: str
    customer: str
    amount: Money
    payment_method: str = "cards/default"

    @property
    def payment_id(self) -> str:
        return self.order.removeprefix("orders/")


class ProviderStatus(enum.Enum):
    """Where a key stands in the provider's books."""

    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    REFUNDED = "REFUNDED"


@dataclass(frozen=True)
class ProviderRecord:
    """The provider's record of one idempotency key (its answer to `outcome(key)`)."""

    key: str
    status: ProviderStatus
    amount: Money
    reference: str
    decline_reason: str = ""
    captured: Money | None = None
    refunded: Money | None = None

    @property
    def approved(self) -> bool:
        return self.status is not ProviderStatus.DECLINED
