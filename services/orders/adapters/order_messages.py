"""What orders sends: the charge request to payments, and its own events on `orders.events`."""

from __future__ import annotations

from emporium.orders.v1 import order_events_pb2 as events
from emporium.payments.v1 import payment_messages_pb2 as payments
from libs.messaging.envelope import Outgoing, command, event
from services.orders.api.mapping import order_message
from services.orders.domain.model import Order, OrderState

DOMAIN_EVENTS = "orders"
CHARGE_QUEUE = "payments.charge"  # payments' work queue (declared by payments)


def created_messages(order: Order) -> list[Outgoing]:
    snapshot = order_message(order)
    return [
        command(
            CHARGE_QUEUE,
            payments.ChargePayment(
                order=order.name,
                customer=order.customer,
                amount=order.total.to_message(),
                payment_method=order.payment_method,
            ),
            correlation_id=order.name,
        ),
        event(DOMAIN_EVENTS, events.OrderCreated(order=snapshot), correlation_id=order.name),
    ]


def state_event(order: Order) -> Outgoing:
    snapshot = order_message(order)
    if order.state is OrderState.CONFIRMED:
        body: events.OrderConfirmed | events.OrderCancelled = events.OrderConfirmed(order=snapshot)
    elif order.state is OrderState.CANCELLED:
        body = events.OrderCancelled(order=snapshot)
    else:
        raise ValueError(f"no event for an order moving to {order.state.value}")
    return event(DOMAIN_EVENTS, body, correlation_id=order.name)
