"""Payment use cases: authorize, capture, void and refund, safe under redelivery and under
commands for one payment arriving in any order at competing workers.

Every change is a guarded transition (from the state the payment was read in), so a race has
one winner. The loser of a race that left money held at the provider lets it go itself: an
authorization that comes back after the payment was voided is voided at the provider.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from libs.runtime.errors import DomainError, ErrorKind, invalid_argument, not_found
from libs.runtime.pagination import page_request
from libs.runtime.resource_names import resource_id
from services.payments.domain.model import (
    Payment,
    PaymentRequest,
    PaymentState,
    ProviderRecord,
    ProviderStatus,
)
from services.payments.domain.ports import OrderBook, PaymentProvider, PaymentRepository
from services.payments.domain.reasons import Reason

log = logging.getLogger("emporium.payments")

NO_ANSWER = "no answer from the payment provider"


class PaymentChanged(Exception):
    """The payment changed while this command was handled; handling it again sees the change."""


def _now() -> datetime:
    return datetime.now(UTC)


class Payments:
    def __init__(
        self,
        repository: PaymentRepository,
        provider: PaymentProvider,
        orders: OrderBook,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._repository = repository
        self._provider = provider
        self._orders = orders
        self._clock = clock

    async def authorize(self, request: PaymentRequest, message_id: str) -> Payment:
        """Authorizes once however often asked: an attempt after the first asks the provider
        for the outcome of the key first. A payment voided before (or while) it is
        authorized is never left holding money. Only an order that exists, for its own amount
        and customer, is sent to the provider; one that can no longer be paid is voided."""
        _check_amount(request)
        known = await self._repository.get(request.payment_id)
        if known is None and not await self._orders.payable(request):
            payment, _ = await self._repository.open(request, PaymentState.VOIDED)
            return payment
        if known is not None and (known.amount, known.customer) != (
            request.amount,
            request.customer,
        ):
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.NOT_THE_ORDERS_PAYMENT,
                f"{known.name} is {known.amount.decimal_text()} {known.amount.currency_code}"
                f" for {known.customer}; this asks for {request.amount.decimal_text()}"
                f" {request.amount.currency_code} for {request.customer}",
                {"payment": known.name},
            )
        if known is None:
            # A new payment is created with its first attempt counted: the authorization
            # goes to the provider next (one write, not two).
            payment, created = await self._repository.open(
                request, PaymentState.PENDING, attempted=True
            )
        else:
            payment, created = known, False
        if payment.state is not PaymentState.PENDING:
            if payment.state in (PaymentState.VOIDED, PaymentState.DECLINED) and payment.attempts:
                # Voided while an earlier attempt was at the provider, whose worker died before
                # it heard the answer: this redelivery lets that authorization go.
                await self._void_held(payment)
            await self._repository.announce(payment, message_id)  # e.g. PaymentVoided
            return payment
        record = None
        if not created and payment.attempts:
            record = await self._provider.outcome(payment.key)
        if record is None:
            if not created:
                started = await self._repository.attempt(payment)
                if started is None:
                    raise PaymentChanged(payment.name)
                payment = started
            record = await self._provider.authorize(
                payment.key, payment.amount, payment.payment_method
            )
        settled = await self._settle(payment, record, message_id)
        log.info("payment settled", extra={"payment": settled.name, "state": settled.state.value})
        return settled

    async def _settle(self, payment: Payment, record: ProviderRecord, message_id: str) -> Payment:
        state = PaymentState.AUTHORIZED if record.approved else PaymentState.DECLINED
        settled = await self._repository.transition(
            payment,
            state,
            reference=record.reference,
            reason=record.decline_reason,
            message_id=message_id,
        )
        if settled is not None:
            return settled
        current = await self._existing(payment.payment_id)
        if record.approved and current.state in (PaymentState.VOIDED, PaymentState.DECLINED):
            # Voided (or given up on by the reconciler) while the provider was authorizing:
            # let the late authorization go, and say so again now that it is gone.
            await self._provider.void(payment.key, record.reference)
            await self._repository.announce(current, message_id)
        return current

    async def _void_held(self, payment: Payment) -> None:
        """Voids what the provider holds under the payment's key, if anything."""
        record = await self._provider.outcome(payment.key)
        if record is not None and record.status is ProviderStatus.AUTHORIZED:
            await self._provider.void(payment.key, record.reference)

    async def capture(self, order: str, message_id: str) -> Payment:
        payment = await self._existing(payment_id_of_order(order))
        if payment.state in (PaymentState.CAPTURED, PaymentState.REFUNDED):
            return payment
        if payment.state is not PaymentState.AUTHORIZED:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.PAYMENT_NOT_CAPTURABLE,
                f"{payment.name} is {payment.state.value.lower()}; only an authorized payment"
                " is captured",
                {"payment": payment.name, "state": payment.state.value},
            )
        await self._provider.capture(payment.key, payment.provider_reference, payment.amount)
        captured = await self._repository.transition(
            payment, PaymentState.CAPTURED, message_id=message_id
        )
        if captured is None:
            raise PaymentChanged(payment.name)
        return captured

    async def void(self, request: PaymentRequest, reason: str, message_id: str) -> Payment:
        """Lets the payment go: a captured one is refunded, an authorized one voided, and one
        not authorized yet recorded as VOIDED, so its authorization is never sent (or, if it
        is at the provider right now, voided when it comes back)."""
        payment, created = await self._repository.open(request, PaymentState.VOIDED)
        if created:
            return payment
        return await self._let_go(payment, reason, message_id)

    async def refund_order(self, order: str, reason: str, message_id: str) -> Payment:
        """The RefundPayment command: a captured payment is refunded, any other let go."""
        payment = await self._existing(payment_id_of_order(order))
        return await self._let_go(payment, reason, message_id)

    async def _let_go(self, payment: Payment, reason: str, message_id: str) -> Payment:
        if payment.state is PaymentState.PENDING:
            voided = await self._repository.transition(
                payment, PaymentState.VOIDED, reason=reason, message_id=message_id
            )
            if voided is None:
                raise PaymentChanged(payment.name)
            if payment.attempts:  # an earlier attempt may have got through before this void
                await self._void_held(payment)
            return voided
        if payment.state is PaymentState.AUTHORIZED:
            await self._provider.void(payment.key, payment.provider_reference)
            voided = await self._repository.transition(
                payment, PaymentState.VOIDED, reason=reason, message_id=message_id
            )
            if voided is None:
                raise PaymentChanged(payment.name)
            return voided
        if payment.state is PaymentState.CAPTURED:
            return await self._refund(payment, reason, message_id)
        return payment  # declined, voided or refunded: no money held

    async def refund(self, name: str, reason: str = "") -> Payment:
        """The RefundPayment RPC: only a captured payment is refunded."""
        payment = await self.get(name)
        if payment.state is PaymentState.REFUNDED:
            return payment
        if payment.state is not PaymentState.CAPTURED:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.PAYMENT_NOT_REFUNDABLE,
                f"{name} is {payment.state.value.lower()}; only a succeeded payment is refunded",
                {"payment": name, "state": payment.state.value},
            )
        return await self._refund(payment, reason or "refunded by request", "")

    async def _refund(self, payment: Payment, reason: str, message_id: str) -> Payment:
        await self._provider.refund(payment.key, payment.provider_reference, payment.amount)
        refunded = await self._repository.transition(
            payment, PaymentState.REFUNDED, reason=reason, message_id=message_id
        )
        if refunded is None:
            raise PaymentChanged(payment.name)
        return refunded

    async def reconcile(self, pending_for: timedelta, limit: int = 100) -> int:
        """Settles payments left PENDING longer than `pending_for` (their command was
        dead-lettered, or their worker died for good) with what the provider knows of their
        key; one the provider never saw is declined. Returns how many it settled."""
        settled = 0
        for payment in await self._repository.pending_since(self._clock() - pending_for, limit):
            record = await self._provider.outcome(payment.key)
            if record is None:
                done = await self._repository.transition(
                    payment, PaymentState.DECLINED, reason=NO_ANSWER
                )
            else:
                done = await self._settle(payment, record, "")
            if done is not None:
                settled += 1
                log.warning(
                    "pending payment reconciled",
                    extra={"payment": payment.name, "state": done.state.value},
                )
        return settled

    async def get(self, name: str) -> Payment:
        payment = await self._repository.get(payment_id_of(name))
        if payment is None:
            raise not_found(name, Reason.PAYMENT_NOT_FOUND)
        return payment

    async def _existing(self, payment_id: str) -> Payment:
        payment = await self._repository.get(payment_id)
        if payment is None:
            raise not_found(f"payments/{payment_id}", Reason.PAYMENT_NOT_FOUND)
        return payment

    async def list(
        self, customer: str, page_size: int, page_token: str
    ) -> tuple[list[Payment], str]:
        page = page_request(page_size, page_token, customer)
        payments, total = await self._repository.list(customer, page.offset, page.limit)
        return payments, page.next_token(len(payments), total)


def _check_amount(request: PaymentRequest) -> None:
    if request.amount.total_nanos <= 0:
        raise invalid_argument(
            Reason.INVALID_AMOUNT, f"{request.order}: the amount must be positive", []
        )


def payment_id_of(name: str) -> str:
    return resource_id(name, "payments/{payment}")


def payment_id_of_order(order: str) -> str:
    return resource_id(order, "orders/{order}")
