"""One message per order event, in words a customer reads."""

from __future__ import annotations

from decimal import Decimal

from libs.money import NANOS_PER_UNIT, Money
from services.notifications.domain.model import MoneyOutcome, Notification, OrderEvent, OrderNews


def render(key: str, event: OrderEvent, recipient_domain: str) -> Notification:
    reference = event.order.removeprefix("orders/")
    if event.news is OrderNews.CREATED:
        subject = f"We received your order {reference}"
        opening = "Thank you for your order. We are taking payment now."
    elif event.news is OrderNews.CONFIRMED:
        subject = f"Your order {reference} is confirmed"
        opening = "Payment went through and your items are set aside for you."
    else:
        subject = f"Your order {reference} was cancelled"
        opening = f"Your order was cancelled ({event.cancel_reason or 'no reason given'})."
        if event.money is not None:
            opening += " " + _MONEY_AFTER_CANCEL[event.money].format(total=_amount(event.total))
    lines = "\n".join(
        f"  {line.quantity} x {line.title or line.product}  {_amount(line.unit_price)}"
        for line in event.lines
    )
    body = f"{opening}\n\n{lines}\n\n  Total: {_amount(event.total)}\n"
    customer = event.customer.removeprefix("customers/")
    return Notification(key, f"{customer}@{recipient_domain}", subject, body)


# What happened to the customer's money, told once: in the one cancellation notice.
_MONEY_AFTER_CANCEL = {
    MoneyOutcome.VOIDED: "The {total} held on your card was released; you were not charged.",
    MoneyOutcome.REFUNDED: "Your payment of {total} was refunded.",
    MoneyOutcome.DECLINED: "Your card was not charged.",
}


def _amount(money: Money) -> str:
    return f"{Decimal(money.total_nanos) / NANOS_PER_UNIT:.2f} {money.currency_code}"
