"""The handler of orders' queue of payment outcomes, which moves orders on (the queue, its
bindings and orders' event stream are declared in `proto/emporium/orders/v1/order_events.proto`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from emporium.payments.v1 import payment_messages_pb2 as payments
from libs.messaging.consumer import Delivery, PermanentFailure
from libs.runtime.errors import DomainError, ErrorKind
from services.orders.domain.orders import Orders

# An unknown order or a malformed name: no retry can fix it.
_PERMANENT = (ErrorKind.INVALID_ARGUMENT, ErrorKind.NOT_FOUND)


class PaymentResults:
    def __init__(self, orders: Orders) -> None:
        self._orders = orders
        self._outcomes: dict[str, Callable[[Delivery], Awaitable[object]]] = {
            payments.PaymentAuthorized.DESCRIPTOR.full_name: self._authorized,
            payments.PaymentDeclined.DESCRIPTOR.full_name: self._declined,
            payments.PaymentCaptured.DESCRIPTOR.full_name: self._captured,
            payments.PaymentVoided.DESCRIPTOR.full_name: self._voided,
            payments.PaymentRefunded.DESCRIPTOR.full_name: self._refunded,
        }

    async def __call__(self, delivery: Delivery) -> None:
        handle = self._outcomes.get(delivery.message_type)
        if handle is None:
            raise PermanentFailure(f"orders does not handle {delivery.message_type!r}")
        try:
            await handle(delivery)
        except DomainError as error:
            if error.kind in _PERMANENT:
                raise PermanentFailure(str(error)) from error
            raise

    async def _authorized(self, delivery: Delivery) -> object:
        body = delivery.body(payments.PaymentAuthorized)
        return await self._orders.payment_authorized(body.order, delivery.message_id)

    async def _declined(self, delivery: Delivery) -> object:
        body = delivery.body(payments.PaymentDeclined)
        return await self._orders.payment_declined(body.order, body.reason, delivery.message_id)

    async def _captured(self, delivery: Delivery) -> object:
        body = delivery.body(payments.PaymentCaptured)
        return await self._orders.payment_captured(body.order, delivery.message_id)

    async def _voided(self, delivery: Delivery) -> object:
        body = delivery.body(payments.PaymentVoided)
        return await self._orders.payment_voided(body.order, delivery.message_id)

    async def _refunded(self, delivery: Delivery) -> object:
        body = delivery.body(payments.PaymentRefunded)
        return await self._orders.payment_refunded(body.order, delivery.message_id)
