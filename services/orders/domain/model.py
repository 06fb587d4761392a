"""Order entities."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from libs.money import Money

ORDER_PREFIX = "orders/"


class OrderState(enum.Enum):
    PENDING_PAYMENT = "PENDING_PAYMENT"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self is not OrderState.PENDING_PAYMENT


@dataclass(frozen=True)
class OrderLine:
    product_id: str
    quantity: int
    unit_price: Money
    title: str


@dataclass(frozen=True)
class Order:
    order_id: str
    customer: str
    lines: tuple[OrderLine, ...]
    state: OrderState
    reservation: str
    create_time: datetime
    update_time: datetime
    cancel_reason: str = ""
    version: int = 1
    payment_method: str = "cards/default"

    @property
    def name(self) -> str:
        return ORDER_PREFIX + self.order_id

    @property
    def total(self) -> Money:
        currency = self.lines[0].unit_price.currency_code
        total = Money(currency, 0, 0)
        for line in self.lines:
            total = total.plus(line.unit_price.times(line.quantity))
        return total


@dataclass(frozen=True)
class ProductInfo:
    """What orders needs to know of a catalog product."""

    product_id: str
    title: str
    price: Money
