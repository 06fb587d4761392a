"""Exponential backoff with full jitter (as in AWS's "Exponential Backoff And Jitter")."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** (retry - 1))
        return (rng or random).uniform(0.0, ceiling)
