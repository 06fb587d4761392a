"""The messages the orders use cases decide to send, as the contracts spell them: commands
to payments and orders' own events, each routed as its contract says."""

from __future__ import annotations

from collections.abc import Callable

from emporium.orders.v1 import order_events_pb2 as events
from emporium.orders.v1 import orders_service_pb2 as pb
from emporium.payments.v1 import payment_messages_pb2 as payments
from libs.messaging.contract import outgoing
from libs.messaging.envelope import Outgoing
from services.orders.domain.model import MessageKind, Order, OrderMessage

Snapshot = Callable[[Order], pb.Order]  # the order as its protobuf resource (api.mapping)
_EVENTS: dict[
    MessageKind, type[events.OrderCreated | events.OrderConfirmed | events.OrderCancelled]
] = {
    MessageKind.ORDER_CREATED: events.OrderCreated,
    MessageKind.ORDER_CONFIRMED: events.OrderConfirmed,
    MessageKind.ORDER_CANCELLED: events.OrderCancelled,
}


class OrderMessages:
    """Turns domain messages into outgoing ones; `snapshot` is the resource mapping the API
    serves, so events carry the order exactly as GetOrder shows it."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def outgoing(self, message: OrderMessage) -> Outgoing:
        order = message.order
        correlation = order.name
        event_type = _EVENTS.get(message.kind)
        if event_type is not None:
            body = event_type(order=self._snapshot(order))
            return outgoing(body, correlation_id=correlation)
        match message.kind:
            case MessageKind.AUTHORIZE_PAYMENT:
                authorize = payments.AuthorizePayment(
                    order=order.name,
                    customer=order.customer,
                    amount=order.total.to_message(),
                    payment_method=order.payment_method,
                )
                return outgoing(authorize, correlation_id=correlation)
            case MessageKind.CAPTURE_PAYMENT:
                capture = payments.CapturePayment(order=order.name)
                return outgoing(capture, correlation_id=correlation)
            case MessageKind.VOID_PAYMENT:
                void = payments.VoidPayment(
                    order=order.name,
                    customer=order.customer,
                    amount=order.total.to_message(),
                    reason=order.cancel_reason,
                )
                return outgoing(void, correlation_id=correlation)
        raise ValueError(f"no message for {message.kind}")
