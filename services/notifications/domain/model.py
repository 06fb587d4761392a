"""What notifications sends, and the order news it is told in."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from libs.money import Money


@dataclass(frozen=True)
class Notification:
    key: str  # the event's message id: delivering the same key twice delivers once
    recipient: str
    subject: str
    body: str


class OrderNews(enum.Enum):
    CREATED = "created"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


class MoneyOutcome(enum.Enum):
    """What happened to the customer's money when an order was cancelled (none yet: None)."""

    VOIDED = "voided"
    REFUNDED = "refunded"
    DECLINED = "declined"


@dataclass(frozen=True)
class OrderLine:
    product: str
    title: str
    quantity: int
    unit_price: Money


@dataclass(frozen=True)
class OrderEvent:
    """An order event as the customer is told it (adapters map the contract's events to this)."""

    news: OrderNews
    order: str  # the resource name, orders/<id>
    customer: str  # customers/<id>
    lines: tuple[OrderLine, ...]
    total: Money
    cancel_reason: str = ""
    money: MoneyOutcome | None = None
