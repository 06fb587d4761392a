"""Retry budget per upstream, as Linkerd's: retries may add at most `ratio` of the calls made in
the last `window` seconds, plus `min_per_second` retries a second. With an upstream failing every
call, total attempts stay within (1 + ratio) x calls + min_per_second x seconds."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from libs.resilience.clock import Clock, monotonic


@dataclass(frozen=True)
class BudgetPolicy:
    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0


class RetryBudget:
    def __init__(self, policy: BudgetPolicy | None = None, clock: Clock = monotonic) -> None:
        self.policy = policy or BudgetPolicy()
        self._clock = clock
        self._calls: deque[float] = deque()
        self._retries: deque[float] = deque()
        self._first_call: float | None = None

    def record_call(self) -> None:
        now = self._clock()
        if self._first_call is None:
            self._first_call = now
        self._forget_before(now - self.policy.window)  # bounded even when nothing retries
        self._calls.append(now)

    def try_spend(self) -> bool:
        """Takes one retry from the budget if there is one."""
        now = self._clock()
        self._forget_before(now - self.policy.window)
        # The floor accrues from the first call on (a second's worth at once), so a burst at
        # start-up cannot spend a whole window's floor.
        elapsed = now - (self._first_call if self._first_call is not None else now)
        floor = self.policy.min_per_second * min(self.policy.window, max(1.0, elapsed))
        if len(self._retries) + 1 > self.policy.ratio * len(self._calls) + floor:
            return False
        self._retries.append(now)
        return True

    def _forget_before(self, horizon: float) -> None:
        for times in (self._calls, self._retries):
            while times and times[0] < horizon:
                times.popleft()
