"""OrdersService over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2
from google.type import money_pb2

from emporium.orders.v1 import orders_service_pb2 as pb
from emporium.orders.v1 import orders_service_pb2_grpc as pb_grpc
from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from libs.runtime.idempotency import fingerprint
from services.orders.domain.model import Order, OrderState
from services.orders.domain.order_feed import FeedClosed
from services.orders.domain.orders import Orders

DOMAIN = "orders.emporium.dev"
Context = grpc.aio.ServicerContext[object, object]
STATES = {
    OrderState.PENDING_PAYMENT: pb.ORDER_STATE_PENDING_PAYMENT,
    OrderState.CONFIRMED: pb.ORDER_STATE_CONFIRMED,
    OrderState.CANCELLED: pb.ORDER_STATE_CANCELLED,
}


class OrdersServicer(pb_grpc.OrdersServiceServicer):
    def __init__(self, orders: Orders) -> None:
        self._orders = orders

    async def CreateOrder(self, request: pb.CreateOrderRequest, context: Context) -> pb.Order:
        order = await self._orders.create(
            request.order.customer,
            [(line.product, line.quantity) for line in request.order.lines],
            request.request_id,
            fingerprint(request),
        )
        return order_message(order)

    async def GetOrder(self, request: pb.GetOrderRequest, context: Context) -> pb.Order:
        return order_message(await self._orders.get(request.name))

    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: Context
    ) -> pb.ListOrdersResponse:
        orders, token = await self._orders.list(
            request.customer, request.page_size, request.page_token
        )
        return pb.ListOrdersResponse(
            orders=[order_message(o) for o in orders], next_page_token=token
        )

    async def CancelOrder(self, request: pb.CancelOrderRequest, context: Context) -> pb.Order:
        return order_message(await self._orders.cancel(request.name, request.reason))

    async def WatchOrder(
        self, request: pb.WatchOrderRequest, context: Context
    ) -> AsyncIterator[pb.Order]:
        try:
            async for order in self._orders.watch(request.name):
                yield order_message(order)
        except FeedClosed:
            raise DomainError(
                ErrorKind.UNAVAILABLE, "SHUTTING_DOWN", "the server is shutting down; watch again"
            ) from None


def order_message(order: Order) -> pb.Order:
    return pb.Order(
        name=order.name,
        customer=order.customer,
        lines=[
            pb.OrderLine(
                product=f"products/{line.product_id}",
                quantity=line.quantity,
                unit_price=_money(line.unit_price),
                title=line.title,
            )
            for line in order.lines
        ],
        total=_money(order.total),
        state=STATES[order.state],
        reservation=order.reservation,
        create_time=_timestamp(order.create_time),
        update_time=_timestamp(order.update_time),
        cancel_reason=order.cancel_reason,
        etag=str(order.version),
    )


def _money(money: Money) -> money_pb2.Money:
    return money_pb2.Money(currency_code=money.currency_code, units=money.units, nanos=money.nanos)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
