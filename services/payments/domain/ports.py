"""What payments needs from the outside: a payment provider and storage."""

from __future__ import annotations

from typing import Protocol

from libs.money import Money
from services.payments.domain.model import ChargeOutcome, ChargeRequest, Payment, PaymentState


class ProviderUnavailable(Exception):
    """The provider could not answer now; asking again later may work."""


class PaymentProvider(Protocol):
    async def charge(self, idempotency_key: str, amount: Money, method: str) -> ChargeOutcome:
        """Charges at most once per key: asked again, returns the first outcome."""
        ...

    async def refund(self, idempotency_key: str, reference: str, amount: Money) -> None: ...


class PaymentRepository(Protocol):
    async def get(self, payment_id: str) -> Payment | None: ...

    async def open(self, request: ChargeRequest) -> Payment:
        """The payment for this order, created PENDING if it does not exist yet."""
        ...

    async def settle(self, payment: Payment, outcome: ChargeOutcome, message_id: str) -> Payment:
        """Records the provider's outcome and its event, with `message_id` in the inbox, in one
        transaction. A message already handled changes nothing."""
        ...

    async def set_state(self, payment: Payment, state: PaymentState) -> Payment: ...

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Payment], int]: ...
