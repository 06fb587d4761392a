"""OrdersService over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from emporium.orders.v1 import orders_service_pb2 as pb
from emporium.orders.v1 import orders_service_pb2_grpc as pb_grpc
from libs.runtime.idempotency import fingerprint
from services.orders.api.mapping import order_message
from services.orders.domain.orders import Orders

DOMAIN = "orders.emporium.dev"
Context = grpc.aio.ServicerContext[object, object]


class OrdersServicer(pb_grpc.OrdersServiceServicer):
    def __init__(self, orders: Orders) -> None:
        self._orders = orders

    async def CreateOrder(self, request: pb.CreateOrderRequest, context: Context) -> pb.Order:
        order = await self._orders.create(
            request.order.customer,
            [(line.product, line.quantity) for line in request.order.lines],
            request.request_id,
            fingerprint(request),
            request.order.payment_method,
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
        after = int(request.after_etag) if request.after_etag else None
        async for order in self._orders.watch(request.name, after):
            yield order_message(order)
