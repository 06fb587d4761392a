"""Orders as payments asks them (OrdersService.GetOrder through the client kit), and the
trusting stand-in for running the payments worker without orders."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from emporium.orders.v1 import orders_service_pb2 as orders_pb
from emporium.orders.v1 import orders_service_pb2_grpc as orders_grpc
from libs.money import Money
from libs.rpcclient.upstream import Upstream, upstream_errors
from libs.runtime.errors import DomainError, ErrorKind
from services.payments.domain.model import PaymentRequest
from services.payments.domain.reasons import Reason

_WAITING = (orders_pb.ORDER_STATE_PENDING_PAYMENT, orders_pb.ORDER_STATE_AUTHORIZED)
_PAID = (orders_pb.ORDER_STATE_CONFIRMED,)


class GrpcOrderBook:
    """Connects on first use: orders may start (and register) after payments."""

    def __init__(self, connect: Callable[[], Upstream]) -> None:
        self._connect = connect
        self._upstream: Upstream | None = None

    async def close(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()

    async def payable(self, request: PaymentRequest) -> bool:
        if self._upstream is None:
            self._upstream = self._connect()
        stub = self._upstream.stub(orders_grpc.OrdersServiceStub)
        try:
            order = await stub.GetOrder(orders_pb.GetOrderRequest(name=request.order))
        except grpc.aio.AioRpcError as error:
            translated = upstream_errors(error)
            assert translated is not None
            if translated.kind is ErrorKind.INVALID_ARGUMENT:  # not an order name at all
                raise DomainError(
                    ErrorKind.NOT_FOUND, Reason.ORDER_NOT_FOUND, str(translated)
                ) from error
            raise translated from error
        total = Money.from_message(order.total)
        if total != request.amount or order.customer != request.customer:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.NOT_THE_ORDERS_PAYMENT,
                f"{request.order} is {total.decimal_text()} {total.currency_code} for"
                f" {order.customer}, not {request.amount.decimal_text()}"
                f" {request.amount.currency_code} for {request.customer}",
                {"order": request.order},
            )
        return order.state in _WAITING or order.state in _PAID


class TrustingOrderBook:
    """Every order is payable: for the payments worker's own tests, which run without orders
    (PAYMENTS_CHECK_ORDERS=false)."""

    async def payable(self, request: PaymentRequest) -> bool:
        return True
