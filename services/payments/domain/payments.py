"""Payment use cases."""

from __future__ import annotations

import logging

from libs.runtime.errors import DomainError, ErrorKind, not_found
from libs.runtime.pagination import page_request
from libs.runtime.resource_names import resource_id
from services.payments.domain.model import ChargeRequest, Payment, PaymentState
from services.payments.domain.ports import PaymentProvider, PaymentRepository

log = logging.getLogger("emporium.payments")


class Payments:
    def __init__(self, repository: PaymentRepository, provider: PaymentProvider) -> None:
        self._repository = repository
        self._provider = provider

    async def charge(self, request: ChargeRequest, message_id: str) -> Payment:
        """Charges the order once, however often the request is delivered: the provider call
        carries the payment id as its idempotency key, so a redelivery after a crash between
        charging and recording gets the first outcome back instead of a second charge."""
        payment = await self._repository.open(request)
        if payment.state is not PaymentState.PENDING:
            return payment  # settled by an earlier delivery
        outcome = await self._provider.charge(
            payment.payment_id, payment.amount, payment.payment_method
        )
        settled = await self._repository.settle(payment, outcome, message_id)
        log.info(
            "payment settled",
            extra={"payment": settled.name, "state": settled.state.value},
        )
        return settled

    async def get(self, name: str) -> Payment:
        payment = await self._repository.get(payment_id_of(name))
        if payment is None:
            raise not_found(name, "PAYMENT_NOT_FOUND")
        return payment

    async def list(
        self, customer: str, page_size: int, page_token: str
    ) -> tuple[list[Payment], str]:
        page = page_request(page_size, page_token, customer)
        payments, total = await self._repository.list(customer, page.offset, page.limit)
        return payments, page.next_token(len(payments), total)

    async def refund(self, name: str) -> Payment:
        payment = await self.get(name)
        if payment.state is PaymentState.REFUNDED:
            return payment
        if payment.state is not PaymentState.SUCCEEDED:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                "PAYMENT_NOT_REFUNDABLE",
                f"{name} is {payment.state.value.lower()}; only a succeeded payment is refunded",
                {"payment": name, "state": payment.state.value},
            )
        await self._provider.refund(payment.payment_id, payment.provider_reference, payment.amount)
        return await self._repository.set_state(payment, PaymentState.REFUNDED)


def payment_id_of(name: str) -> str:
    return resource_id(name, "payments/{payment}")
