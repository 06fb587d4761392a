"""What payments needs from the outside: a payment provider and storage."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from libs.money import Money
from services.payments.domain.model import Payment, PaymentRequest, PaymentState, ProviderRecord


class ProviderUnavailable(Exception):
    """The provider could not answer now; asking again later may work."""


class ProviderRefused(Exception):
    """The provider refused the operation for good (capturing a voided authorization...)."""


class PaymentProvider(Protocol):
    """A card payment provider. Every operation is idempotent by key: asked again, it returns
    (or leaves) the first outcome."""

    async def authorize(self, key: str, amount: Money, method: str) -> ProviderRecord:
        """Holds `amount`, or declines (status DECLINED)."""
        ...

    async def capture(self, key: str, reference: str, amount: Money) -> None: ...

    async def void(self, key: str, reference: str) -> None:
        """Lets an authorization go; a key that holds nothing is left as it is."""
        ...

    async def refund(self, key: str, reference: str, amount: Money) -> None: ...

    async def outcome(self, key: str) -> ProviderRecord | None:
        """The provider's record of `key`; None if no authorization with it got through."""
        ...

    async def records(self) -> list[ProviderRecord]:
        """Every key the provider knows (its settlement report, for reconciliation)."""
        ...


class OrderBook(Protocol):
    """Orders, as payments asks them whether an order may be paid."""

    async def payable(self, request: PaymentRequest) -> bool:
        """True if the order waits for this payment; False if it can no longer be paid
        (cancelled or being cancelled). Raises DomainError NOT_FOUND for an order that does
        not exist and FAILED_PRECONDITION when the amount or the customer is not the order's."""
        ...


class PaymentRepository(Protocol):
    async def get(self, payment_id: str) -> Payment | None: ...

    async def open(
        self, request: PaymentRequest, state: PaymentState, *, attempted: bool = False
    ) -> tuple[Payment, bool]:
        """The payment for this order, created in `state` if it does not exist yet (True);
        otherwise the existing one (False). A new VOIDED payment is announced at once. With
        `attempted`, a new PENDING payment is created with one authorization attempt counted
        (as `attempt` would), for a caller that sends the authorization next."""
        ...

    async def attempt(self, payment: Payment) -> Payment | None:
        """Counts one more authorization attempt, if the payment is still PENDING."""
        ...

    async def transition(
        self,
        payment: Payment,
        state: PaymentState,
        *,
        reference: str | None = None,
        reason: str = "",
        message_id: str = "",
    ) -> Payment | None:
        """Moves the payment from the state it was read in to `state` and records the event
        of `state`, with `message_id` in the inbox, in one transaction. None if the payment
        changed meanwhile (someone else won); a message handled before changes nothing and
        returns the payment as it is."""
        ...

    async def announce(self, payment: Payment, message_id: str) -> None:
        """Publishes the event of the payment's current state again (for a late command)."""
        ...

    async def pending_since(self, before: datetime, limit: int) -> Sequence[Payment]:
        """PENDING payments not changed since `before`."""
        ...

    async def list(self, customer: str, offset: int, limit: int) -> tuple[list[Payment], int]: ...
