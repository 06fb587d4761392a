"""Order entities, and the messages an order's changes cause."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from libs.money import Money

ORDER_PREFIX = "orders/"


class OrderState(enum.Enum):
    PENDING_PAYMENT = "PENDING_PAYMENT"  # stock held, payment asked for
    AUTHORIZED = "AUTHORIZED"  # payment held; committing the stock
    CONFIRMED = "CONFIRMED"  # stock committed; payment captured (or being captured)
    CANCELLING = "CANCELLING"  # payment being voided, stock being released
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (OrderState.CONFIRMED, OrderState.CANCELLED)


class PaymentState(enum.Enum):
    """What orders last heard of the order's money."""

    UNKNOWN = ""
    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    REFUNDED = "REFUNDED"


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
    payment_state: PaymentState = PaymentState.UNKNOWN
    payment_deadline: datetime | None = None

    @property
    def name(self) -> str:
        return ORDER_PREFIX + self.order_id

    @property
    def settled(self) -> bool:
        """Nothing more will happen to it: terminal, and no capture still to come (a CONFIRMED
        order's payment goes from AUTHORIZED to CAPTURED after it)."""
        capturing = (
            self.state is OrderState.CONFIRMED and self.payment_state is PaymentState.AUTHORIZED
        )
        return self.state.terminal and not capturing

    @property
    def total(self) -> Money:
        currency = self.lines[0].unit_price.currency_code
        total = Money(currency, 0, 0)
        for line in self.lines:
            total = total.plus(line.unit_price.times(line.quantity))
        return total


class MessageKind(enum.Enum):
    """What an order's change tells the rest of the system."""

    ORDER_CREATED = "ORDER_CREATED"
    ORDER_CONFIRMED = "ORDER_CONFIRMED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    AUTHORIZE_PAYMENT = "AUTHORIZE_PAYMENT"
    CAPTURE_PAYMENT = "CAPTURE_PAYMENT"
    VOID_PAYMENT = "VOID_PAYMENT"


@dataclass(frozen=True)
class OrderMessage:
    """A command or event the use case decided to send, about `order` as it was stored."""

    kind: MessageKind
    order: Order


@dataclass(frozen=True)
class ProductInfo:
    """What orders needs to know of a catalog product."""

    product_id: str
    title: str
    price: Money
