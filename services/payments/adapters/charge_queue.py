"""The `payments.charge` work queue: its topology and the handler that charges."""

from __future__ import annotations

from emporium.payments.v1 import payment_messages_pb2 as messages
from libs.messaging.consumer import Delivery, PermanentFailure
from libs.messaging.topology import EventStream, Topology, WorkQueue
from libs.money import Money
from services.payments.domain.model import ChargeRequest
from services.payments.domain.payments import Payments

CHARGE_QUEUE = "payments.charge"
EVENTS_STREAM = "payments.events"


def topology(max_deliveries: int, retry_delays: tuple[float, ...]) -> Topology:
    return Topology(
        work_queues=(
            WorkQueue(CHARGE_QUEUE, max_deliveries=max_deliveries, retry_delays=retry_delays),
        ),
        # Payment events are kept as a replayable stream (and are always routable).
        streams=(EventStream(EVENTS_STREAM, routing_keys=("payments.#",)),),
    )


class ChargeHandler:
    def __init__(self, payments: Payments) -> None:
        self._payments = payments

    async def __call__(self, delivery: Delivery) -> None:
        command = delivery.body(messages.ChargePayment)
        if not command.order.startswith("orders/") or not command.amount.currency_code:
            raise PermanentFailure(f"ChargePayment without order or amount: {command!r}")
        await self._payments.charge(
            ChargeRequest(
                order=command.order,
                customer=command.customer,
                amount=Money.from_message(command.amount),
                payment_method=command.payment_method or "cards/default",
            ),
            delivery.message_id,
        )
