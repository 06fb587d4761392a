"""Payments' domain objects as their protobuf messages."""

from __future__ import annotations

from emporium.payments.v1 import payments_service_pb2 as pb
from libs.storage.timestamps import timestamp_message
from services.payments.domain.model import Payment, PaymentState

STATES = {
    PaymentState.PENDING: pb.PAYMENT_STATE_PENDING,
    PaymentState.AUTHORIZED: pb.PAYMENT_STATE_AUTHORIZED,
    PaymentState.CAPTURED: pb.PAYMENT_STATE_SUCCEEDED,
    PaymentState.DECLINED: pb.PAYMENT_STATE_FAILED,
    PaymentState.VOIDED: pb.PAYMENT_STATE_VOIDED,
    PaymentState.REFUNDED: pb.PAYMENT_STATE_REFUNDED,
}


def payment_message(payment: Payment) -> pb.Payment:
    return pb.Payment(
        name=payment.name,
        order=payment.order,
        customer=payment.customer,
        amount=payment.amount.to_message(),
        state=STATES[payment.state],
        decline_reason=payment.decline_reason,
        provider_reference=payment.provider_reference,
        create_time=timestamp_message(payment.create_time),
        update_time=timestamp_message(payment.update_time),
        void_reason=payment.void_reason,
    )
