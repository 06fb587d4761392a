"""Money as the domains see it: a currency and an exact amount (google.type.Money's units and
nanos), with the arithmetic orders need."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from google.type import money_pb2

NANOS_PER_UNIT = 1_000_000_000


@dataclass(frozen=True)
class Money:
    currency_code: str
    units: int
    nanos: int

    @property
    def total_nanos(self) -> int:
        return self.units * NANOS_PER_UNIT + self.nanos

    @classmethod
    def from_total_nanos(cls, currency_code: str, total: int) -> Money:
        units, nanos = divmod(total, NANOS_PER_UNIT)
        return cls(currency_code, units, nanos)

    @classmethod
    def from_decimal(cls, currency_code: str, amount: Decimal) -> Money:
        return cls.from_total_nanos(currency_code, int(amount * NANOS_PER_UNIT))

    @classmethod
    def from_message(cls, message: money_pb2.Money) -> Money:
        return cls(message.currency_code, message.units, message.nanos)

    def decimal_text(self) -> str:
        """The amount as a decimal string with at least two fraction digits: "12.50"."""
        amount = Decimal(self.total_nanos) / NANOS_PER_UNIT
        text = format(amount.normalize(), "f")
        whole, _, fraction = text.partition(".")
        return f"{whole}.{fraction.ljust(2, '0')}"

    def to_message(self) -> money_pb2.Money:
        return money_pb2.Money(currency_code=self.currency_code, units=self.units, nanos=self.nanos)

    def times(self, quantity: int) -> Money:
        return Money.from_total_nanos(self.currency_code, self.total_nanos * quantity)

    def plus(self, other: Money) -> Money:
        if other.currency_code != self.currency_code:
            raise ValueError(f"cannot add {other.currency_code} to {self.currency_code}")
        return Money.from_total_nanos(self.currency_code, self.total_nanos + other.total_nanos)
