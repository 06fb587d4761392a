"""The handler of payments' work queue of commands (AuthorizePayment, CapturePayment,
VoidPayment, RefundPayment); the queue itself is declared in the contract
(`proto/emporium/payments/v1/payment_messages.proto`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from google.protobuf.message import Message

from emporium.payments.v1 import payment_messages_pb2 as messages
from libs.messaging.consumer import Delivery, PermanentFailure
from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from services.payments.domain.model import PaymentRequest
from services.payments.domain.payments import Payments
from services.payments.domain.ports import ProviderRefused

COMMANDS: tuple[type[Message], ...] = (
    messages.AuthorizePayment,
    messages.CapturePayment,
    messages.VoidPayment,
    messages.RefundPayment,
)
# Errors no retry can fix: the message goes to the DLQ at once, with the reason.
_PERMANENT = (ErrorKind.INVALID_ARGUMENT, ErrorKind.NOT_FOUND, ErrorKind.FAILED_PRECONDITION)


class ChargeHandler:
    def __init__(self, payments: Payments) -> None:
        self._payments = payments
        handlers = (self._authorize, self._capture, self._void, self._refund)
        self._commands: dict[str, Callable[[Delivery], Awaitable[object]]] = {
            command.DESCRIPTOR.full_name: handle
            for command, handle in zip(COMMANDS, handlers, strict=True)
        }

    async def __call__(self, delivery: Delivery) -> None:
        handle = self._commands.get(delivery.message_type)
        if handle is None:
            raise PermanentFailure(
                f"payments takes {', '.join(sorted(self._commands))}; not {delivery.message_type!r}"
            )
        try:
            await handle(delivery)
        except DomainError as error:
            if error.kind in _PERMANENT:
                raise PermanentFailure(str(error)) from error
            raise
        except ProviderRefused as error:
            raise PermanentFailure(f"the provider refused: {error}") from error

    async def _authorize(self, delivery: Delivery) -> object:
        command = delivery.body(messages.AuthorizePayment)
        return await self._payments.authorize(
            PaymentRequest(
                order=command.order,
                customer=command.customer,
                amount=Money.from_message(command.amount),
                payment_method=command.payment_method or "cards/default",
            ),
            delivery.message_id,
        )

    async def _capture(self, delivery: Delivery) -> object:
        command = delivery.body(messages.CapturePayment)
        return await self._payments.capture(command.order, delivery.message_id)

    async def _void(self, delivery: Delivery) -> object:
        command = delivery.body(messages.VoidPayment)
        request = PaymentRequest(
            order=command.order,
            customer=command.customer,
            amount=Money.from_message(command.amount),
        )
        return await self._payments.void(request, command.reason, delivery.message_id)

    async def _refund(self, delivery: Delivery) -> object:
        command = delivery.body(messages.RefundPayment)
        return await self._payments.refund_order(command.order, command.reason, delivery.message_id)
