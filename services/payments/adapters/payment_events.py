"""The events payments publishes, one per state a payment reaches (routed as the contract
says: `payments.<Event>` on the events exchange)."""

from __future__ import annotations

from emporium.payments.v1 import payment_messages_pb2 as messages
from libs.messaging.contract import outgoing
from libs.messaging.envelope import Outgoing
from services.payments.domain.model import Payment, PaymentState


def state_event(payment: Payment) -> Outgoing | None:
    """The event that announces `payment` in its current state; None while PENDING."""
    name, order = payment.name, payment.order
    amount = payment.amount.to_message()
    body: (
        messages.PaymentAuthorized
        | messages.PaymentDeclined
        | messages.PaymentCaptured
        | messages.PaymentVoided
        | messages.PaymentRefunded
    )
    match payment.state:
        case PaymentState.PENDING:
            return None
        case PaymentState.AUTHORIZED:
            body = messages.PaymentAuthorized(payment=name, order=order, amount=amount)
        case PaymentState.DECLINED:
            body = messages.PaymentDeclined(
                payment=name, order=order, reason=payment.decline_reason
            )
        case PaymentState.CAPTURED:
            body = messages.PaymentCaptured(payment=name, order=order, amount=amount)
        case PaymentState.VOIDED:
            body = messages.PaymentVoided(payment=name, order=order, reason=payment.void_reason)
        case PaymentState.REFUNDED:
            body = messages.PaymentRefunded(
                payment=name, order=order, amount=amount, reason=payment.void_reason
            )
    return outgoing(body, correlation_id=order)
