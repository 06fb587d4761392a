"""Bulkhead: a cap on concurrent calls to one upstream; beyond it a call is refused at once."""

from __future__ import annotations


class Bulkhead:
    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.max_concurrent:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1
