"""The orders contract's events as notifications' domain reads them."""

from __future__ import annotations

from emporium.orders.v1 import order_events_pb2 as events
from emporium.orders.v1 import orders_service_pb2 as orders
from libs.money import Money
from services.notifications.domain.model import MoneyOutcome, OrderEvent, OrderLine, OrderNews

OrderEventMessage = events.OrderCreated | events.OrderConfirmed | events.OrderCancelled

_NEWS: dict[type[OrderEventMessage], OrderNews] = {
    events.OrderCreated: OrderNews.CREATED,
    events.OrderConfirmed: OrderNews.CONFIRMED,
    events.OrderCancelled: OrderNews.CANCELLED,
}
_MONEY = {
    orders.ORDER_PAYMENT_STATE_VOIDED: MoneyOutcome.VOIDED,
    orders.ORDER_PAYMENT_STATE_REFUNDED: MoneyOutcome.REFUNDED,
    orders.ORDER_PAYMENT_STATE_DECLINED: MoneyOutcome.DECLINED,
}


def order_event(message: OrderEventMessage) -> OrderEvent:
    order = message.order
    return OrderEvent(
        news=_NEWS[type(message)],
        order=order.name,
        customer=order.customer,
        lines=tuple(
            OrderLine(
                product=line.product,
                title=line.title,
                quantity=line.quantity,
                unit_price=Money.from_message(line.unit_price),
            )
            for line in order.lines
        ),
        total=Money.from_message(order.total),
        cancel_reason=order.cancel_reason,
        money=_MONEY.get(order.payment_state),
    )
