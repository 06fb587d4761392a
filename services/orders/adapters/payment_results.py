"""Orders' queue of payment outcomes, its event stream, and the handler that completes orders."""

from __future__ import annotations

from emporium.payments.v1 import payment_messages_pb2 as payments
from libs.messaging.consumer import Delivery, PermanentFailure
from libs.messaging.envelope import event_key
from libs.messaging.topology import EVENTS_EXCHANGE, EventStream, Topology, WorkQueue
from services.orders.domain.orders import Orders

RESULTS_QUEUE = WorkQueue(
    "orders.payment-results",
    bindings=(
        (EVENTS_EXCHANGE, event_key("payments", payments.PaymentSucceeded)),
        (EVENTS_EXCHANGE, event_key("payments", payments.PaymentFailed)),
    ),
)
EVENTS_STREAM = EventStream("orders.events", routing_keys=("orders.#",))
TOPOLOGY = Topology(work_queues=(RESULTS_QUEUE,), streams=(EVENTS_STREAM,))


class PaymentResults:
    def __init__(self, orders: Orders) -> None:
        self._orders = orders

    async def __call__(self, delivery: Delivery) -> None:
        if delivery.message_type == payments.PaymentSucceeded.DESCRIPTOR.full_name:
            paid = delivery.body(payments.PaymentSucceeded)
            await self._orders.payment_succeeded(paid.order, delivery.message_id)
        elif delivery.message_type == payments.PaymentFailed.DESCRIPTOR.full_name:
            failed = delivery.body(payments.PaymentFailed)
            await self._orders.payment_failed(failed.order, failed.reason, delivery.message_id)
        else:
            raise PermanentFailure(f"orders does not handle {delivery.message_type!r}")
