"""Orders' domain objects as their protobuf messages."""

from __future__ import annotations

from emporium.orders.v1 import orders_service_pb2 as pb
from libs.storage.timestamps import timestamp_message
from services.orders.domain.model import Order, OrderState

STATES = {
    OrderState.PENDING_PAYMENT: pb.ORDER_STATE_PENDING_PAYMENT,
    OrderState.CONFIRMED: pb.ORDER_STATE_CONFIRMED,
    OrderState.CANCELLED: pb.ORDER_STATE_CANCELLED,
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
    )
