"""In-memory fakes of payments' ports (provider, repository, orders), for domain unit tests:
no broker, no database, no provider simulator."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from services.payments.domain.model import (
    Payment,
    PaymentRequest,
    PaymentState,
    ProviderRecord,
    ProviderStatus,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # when the fake repository records payments


class FakeProvider:
    def __init__(self) -> None:
        self.known: dict[str, ProviderRecord] = {}
        self.calls: list[str] = []
        # Runs inside the next authorize, as the provider works: a competing worker.
        self.during_authorize: Callable[[], Awaitable[None]] | None = None

    async def authorize(self, key: str, amount: Money, method: str) -> ProviderRecord:
        self.calls.append(f"authorize {key}")
        if self.during_authorize is not None:
            competitor, self.during_authorize = self.during_authorize, None
            await competitor()
        status = (
            ProviderStatus.DECLINED if method == "cards/declined" else ProviderStatus.AUTHORIZED
        )
        return self.known.setdefault(key, ProviderRecord(key, status, amount, f"ref-{key}"))

    async def _move(self, key: str, source: ProviderStatus, target: ProviderStatus) -> None:
        record = self.known.get(key)
        if record is not None and record.status is source:
            self.known[key] = dataclasses.replace(record, status=target)

    async def capture(self, key: str, reference: str, amount: Money) -> None:
        self.calls.append(f"capture {key}")
        await self._move(key, ProviderStatus.AUTHORIZED, ProviderStatus.CAPTURED)

    async def void(self, key: str, reference: str) -> None:
        self.calls.append(f"void {key}")
        await self._move(key, ProviderStatus.AUTHORIZED, ProviderStatus.VOIDED)

    async def refund(self, key: str, reference: str, amount: Money) -> None:
        self.calls.append(f"refund {key}")
        await self._move(key, ProviderStatus.CAPTURED, ProviderStatus.REFUNDED)

    async def outcome(self, key: str) -> ProviderRecord | None:
        self.calls.append(f"outcome {key}")
        return self.known.get(key)

    async def records(self) -> list[ProviderRecord]:
        return list(self.known.values())


class FakeRepository:
    def __init__(self) -> None:
        self.payments: dict[str, Payment] = {}
        self.events: list[tuple[str, PaymentState]] = []

    async def get(self, payment_id: str) -> Payment | None:
        return self.payments.get(payment_id)

    async def open(
        self, request: PaymentRequest, state: PaymentState, *, attempted: bool = False
    ) -> tuple[Payment, bool]:
        if request.payment_id in self.payments:
            return self.payments[request.payment_id], False
        payment = Payment(
            request.payment_id,
            request.order,
            request.customer,
            request.amount,
            request.payment_method,
            state,
            NOW,
            NOW,
            attempts=1 if attempted and state is PaymentState.PENDING else 0,
        )
        self.payments[payment.payment_id] = payment
        if state is not PaymentState.PENDING:
            self.events.append((payment.payment_id, state))
        return payment, True

    async def attempt(self, payment: Payment) -> Payment | None:
        current = self.payments[payment.payment_id]
        if current.state is not PaymentState.PENDING:
            return None
        self.payments[payment.payment_id] = dataclasses.replace(
            current, attempts=current.attempts + 1
        )
        return self.payments[payment.payment_id]

    async def transition(
        self,
        payment: Payment,
        state: PaymentState,
        *,
        reference: str | None = None,
        reason: str = "",
        message_id: str = "",
    ) -> Payment | None:
        if self.payments[payment.payment_id].state is not payment.state:
            return None
        changed = dataclasses.replace(
            self.payments[payment.payment_id],
            state=state,
            provider_reference=reference or payment.provider_reference,
        )
        self.payments[payment.payment_id] = changed
        self.events.append((payment.payment_id, state))
        return changed

    async def announce(self, payment: Payment, message_id: str) -> None:
        self.events.append((payment.payment_id, payment.state))

    async def pending_since(self, before: datetime, limit: int) -> Sequence[Payment]:
        return [
            p
            for p in self.payments.values()
            if p.state is PaymentState.PENDING and p.update_time < before
        ][:limit]

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Payment], int]:
        return list(self.payments.values()), len(self.payments)


class FakeOrders:
    def __init__(self) -> None:
        self.payable_orders = {"orders/o1": True}

    async def payable(self, request: PaymentRequest) -> bool:
        if request.order not in self.payable_orders:
            raise DomainError(ErrorKind.NOT_FOUND, "ORDER_NOT_FOUND", request.order)
        return self.payable_orders[request.order]
