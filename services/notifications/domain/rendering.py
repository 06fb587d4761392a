"""One message per order event, in words a customer reads."""

from __future__ import annotations

from decimal import Decimal

from google.type import money_pb2

from emporium.orders.v1 import order_events_pb2 as events
from emporium.orders.v1 import orders_service_pb2 as orders
from libs.money import NANOS_PER_UNIT
from services.notifications.domain.model import Notification

OrderEvent = events.OrderCreated | events.OrderConfirmed | events.OrderCancelled


def render(key: str, event: OrderEvent, recipient_domain: str) -> Notification:
    order = event.order
    reference = order.name.removeprefix("orders/")
    if isinstance(event, events.OrderCreated):
        subject = f"We received your order {reference}"
        opening = "Thank you for your order. We are taking payment now."
    elif isinstance(event, events.OrderConfirmed):
        subject = f"Your order {reference} is confirmed"
        opening = "Payment went through and your items are set aside for you."
    else:
        subject = f"Your order {reference} was cancelled"
        opening = f"Your order was cancelled ({order.cancel_reason or 'no reason given'})."
        money = _MONEY_AFTER_CANCEL.get(order.payment_state)
        if money is not None:
            opening += " " + money.format(total=_amount(order.total))
    lines = "\n".join(
        f"  {line.quantity} x {line.title or line.product}  {_amount(line.unit_price)}"
        for line in order.lines
    )
    body = f"{opening}\n\n{lines}\n\n  Total: {_amount(order.total)}\n"
    customer = order.customer.removeprefix("customers/")
    return Notification(key, f"{customer}@{recipient_domain}", subject, body)


# What happened to the customer's money, told once: in the one cancellation notice.
_MONEY_AFTER_CANCEL = {
    orders.ORDER_PAYMENT_STATE_VOIDED: "The {total} held on your card was released;"
    " you were not charged.",
    orders.ORDER_PAYMENT_STATE_REFUNDED: "Your payment of {total} was refunded.",
    orders.ORDER_PAYMENT_STATE_DECLINED: "Your card was not charged.",
}


def _amount(money: money_pb2.Money) -> str:
    value = Decimal(money.units) + Decimal(money.nanos) / NANOS_PER_UNIT
    return f"{value:.2f} {money.currency_code}"
