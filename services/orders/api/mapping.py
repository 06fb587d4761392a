"""Orders' domain objects as their protobuf messages."""

from __future__ import annotations

from emporium.orders.v1 import orders_service_pb2 as pb
from libs.storage.timestamps import timestamp_message
from services.orders.domain.model import Order, OrderState, PaymentState

STATES = {
    OrderState.PENDING_PAYMENT: pb.ORDER_STATE_PENDING_PAYMENT,
    OrderState.AUTHORIZED: pb.ORDER_STATE_AUTHORIZED,
    OrderState.CONFIRMED: pb.ORDER_STATE_CONFIRMED,
    OrderState.CANCELLING: pb.ORDER_STATE_CANCELLING,
    OrderState.CANCELLED: pb.ORDER_STATE_CANCELLED,
}
PAYMENT_STATES = {
    PaymentState.UNKNOWN: pb.ORDER_PAYMENT_STATE_UNSPECIFIED,
    PaymentState.AUTHORIZED: pb.ORDER_PAYMENT_STATE_AUTHORIZED,
    PaymentState.DECLINED: pb.ORDER_PAYMENT_STATE_DECLINED,
    PaymentState.CAPTURED: pb.ORDER_PAYMENT_STATE_CAPTURED,
    PaymentState.VOIDED: pb.ORDER_PAYMENT_STATE_VOIDED,
    PaymentState.REFUNDED: pb.ORDER_PAYMENT_STATE_REFUNDED,
}


def order_message(order: Order) -> pb.Order:
    return pb.Order(
        name=order.name,
        customer=order.customer,
        lines=[
            pb.OrderLine(
                product=f"products/{line.product_id}",
                quantity=line.quantity,
                unit_price=line.unit_price.to_message(),
                title=line.title,
            )
            for line in order.lines
        ],
        total=order.total.to_message(),
        state=STATES[order.state],
        reservation=order.reservation,
        create_time=timestamp_message(order.create_time),
        update_time=timestamp_message(order.update_time),
        cancel_reason=order.cancel_reason,
        etag=str(order.version),
        payment_state=PAYMENT_STATES[order.payment_state],
        payment_deadline=timestamp_message(order.payment_deadline)
        if order.payment_deadline is not None and order.state is OrderState.PENDING_PAYMENT
        else None,
    )
