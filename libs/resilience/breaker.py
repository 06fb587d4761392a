"""Circuit breaker per upstream.

CLOSED: calls pass; outcomes go into a rolling window. It opens when, over the last `window`
seconds, at least `min_calls` outcomes were seen and the failure rate reaches `failure_rate`
(or, optionally, after `consecutive_failures` failures in a row).
OPEN: calls are refused at once, until `cooldown` seconds have passed.
HALF_OPEN: exactly one probe is let through, however many callers there are; its success closes
the breaker (with a fresh window), its failure opens it again.
Outcomes the caller reports as neutral (client errors, cancellations) change nothing.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from libs.resilience.clock import Clock, monotonic


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_rate: float = 0.5
    min_calls: int = 20
    window: float = 10.0
    cooldown: float = 5.0
    consecutive_failures: int | None = None


class Permit(enum.Enum):
    """What acquire() granted: a normal call, or the half-open probe."""

    CALL = "call"
    PROBE = "probe"


class CircuitOpen(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit open; retry in {retry_after:.3f}s")
        self.retry_after = retry_after


StateListener = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Clock = monotonic,
        on_change: StateListener | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures_in_window = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    def acquire(self) -> Permit:
        """Raises CircuitOpen while calls must not reach the upstream."""
        if self.state is BreakerState.OPEN:
            waited = self._clock() - self._opened_at
            if waited < self.policy.cooldown:
                raise CircuitOpen(self.policy.cooldown - waited)
            self._move(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._probe_in_flight:
                raise CircuitOpen(0.0)
            self._probe_in_flight = True
            return Permit.PROBE
        return Permit.CALL

    def record(self, permit: Permit, failed: bool | None) -> None:
        """The outcome of a call acquire() allowed; None for a neutral outcome."""
        if permit is Permit.PROBE:
            self._probe_in_flight = False
            if failed is True:
                self._open()
            elif failed is False:
                self._close()
            return
        if failed is None or self.state is not BreakerState.CLOSED:
            return
        now = self._clock()
        self._outcomes.append((now, failed))
        self._failures_in_window += failed
        self._consecutive = self._consecutive + 1 if failed else 0
        horizon = now - self.policy.window
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._failures_in_window -= self._outcomes.popleft()[1]
        by_rate = (
            len(self._outcomes) >= self.policy.min_calls
            and self._failures_in_window / len(self._outcomes) >= self.policy.failure_rate
        )
        by_streak = (
            self.policy.consecutive_failures is not None
            and self._consecutive >= self.policy.consecutive_failures
        )
        if by_rate or by_streak:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    def _close(self) -> None:
        self._outcomes.clear()
        self._failures_in_window = 0
        self._consecutive = 0
        self._move(BreakerState.CLOSED)

    def _move(self, state: BreakerState) -> None:
        previous, self.state = self.state, state
        if previous is not state and self._on_change is not None:
            self._on_change(previous, state)
