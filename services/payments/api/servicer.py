"""PaymentsService over gRPC."""

from __future__ import annotations

import grpc

from emporium.payments.v1 import payments_service_pb2 as pb
from emporium.payments.v1 import payments_service_pb2_grpc as pb_grpc
from services.payments.api.mapping import payment_message
from services.payments.domain.payments import Payments

DOMAIN = "payments.emporium.dev"
Context = grpc.aio.ServicerContext[object, object]


class PaymentsServicer(pb_grpc.PaymentsServiceServicer):
    def __init__(self, payments: Payments) -> None:
        self._payments = payments

    async def GetPayment(self, request: pb.GetPaymentRequest, context: Context) -> pb.Payment:
        return payment_message(await self._payments.get(request.name))

    async def ListPayments(
        self, request: pb.ListPaymentsRequest, context: Context
    ) -> pb.ListPaymentsResponse:
        payments, token = await self._payments.list(
            request.customer, request.page_size, request.page_token
        )
        return pb.ListPaymentsResponse(
            payments=[payment_message(p) for p in payments], next_page_token=token
        )

    async def RefundPayment(self, request: pb.RefundPaymentRequest, context: Context) -> pb.Payment:
        return payment_message(await self._payments.refund(request.name, request.reason))
