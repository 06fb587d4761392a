"""Breaker, budget, bulkhead and backoff on a clock the tests move."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from libs.resilience.backoff import Backoff
from libs.resilience.breaker import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Permit,
)
from libs.resilience.budget import BudgetPolicy, RetryBudget
from libs.resilience.bulkhead import Bulkhead


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_failure_rate_only_past_min_calls() -> None:
    clock = FakeClock()
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        BreakerPolicy(failure_rate=0.5, min_calls=10, cooldown=5),
        clock=clock,
        on_change=lambda a, b: changes.append((a, b)),
    )
    for _ in range(9):
        breaker.record(breaker.acquire(), failed=True)
    assert breaker.state is BreakerState.CLOSED  # 9 calls: below the minimum volume
    breaker.record(breaker.acquire(), failed=True)
    assert breaker.state is BreakerState.OPEN  # type: ignore[comparison-overlap]
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]
    with pytest.raises(CircuitOpen):
        breaker.acquire()


def test_client_errors_do_not_count() -> None:
    breaker = CircuitBreaker(BreakerPolicy(min_calls=5), clock=FakeClock())
    for _ in range(50):
        breaker.record(breaker.acquire(), failed=None)
    assert breaker.state is BreakerState.CLOSED


def test_old_outcomes_leave_the_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(min_calls=10, window=10), clock=clock)
    for _ in range(9):
        breaker.record(breaker.acquire(), failed=True)
    clock.now += 11
    for _ in range(10):
        breaker.record(breaker.acquire(), failed=False)
    breaker.record(breaker.acquire(), failed=True)
    assert breaker.state is BreakerState.CLOSED


def test_half_open_lets_exactly_one_probe_and_its_outcome_decides() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=3, cooldown=5), clock=clock)
    for _ in range(3):
        breaker.record(breaker.acquire(), failed=True)
    assert breaker.state is BreakerState.OPEN
    clock.now += 5
    probe = breaker.acquire()
    assert probe is Permit.PROBE
    for _ in range(49):
        with pytest.raises(CircuitOpen):
            breaker.acquire()
    breaker.record(probe, failed=True)
    assert breaker.state is BreakerState.OPEN
    clock.now += 5
    probe = breaker.acquire()
    breaker.record(probe, failed=False)
    assert breaker.state is BreakerState.CLOSED  # type: ignore[comparison-overlap]
    assert breaker.acquire() is Permit.CALL


def test_neutral_probe_outcome_lets_another_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=1, cooldown=1), clock=clock)
    breaker.record(breaker.acquire(), failed=True)
    clock.now += 1
    breaker.record(breaker.acquire(), failed=None)  # e.g. the caller cancelled the probe
    assert breaker.acquire() is Permit.PROBE


def test_budget_bounds_retries_to_ratio_plus_floor() -> None:
    clock = FakeClock()
    budget = RetryBudget(BudgetPolicy(ratio=0.2, min_per_second=10, window=10), clock=clock)
    calls = retries = 0
    for _ in range(100):  # 10 s at 100 calls/s, each failing and asking to retry 3 times
        for _ in range(100):
            budget.record_call()
            calls += 1
            for _ in range(3):
                if budget.try_spend():
                    retries += 1
        clock.now += 0.1
    assert retries <= 0.2 * calls + 10 * 10
    assert retries >= 0.2 * calls  # and the budget is really spent, not just refused


def test_budget_keeps_only_its_window_of_calls_when_nothing_retries() -> None:
    """A healthy upstream never asks for a retry; its calls must still leave the budget's
    memory (they were kept until the first retry: a day at 50 calls/s is 4 million)."""
    clock = FakeClock()
    budget = RetryBudget(BudgetPolicy(ratio=0.2, min_per_second=0, window=10), clock=clock)
    tracemalloc.start()
    try:
        for _ in range(20_000):  # 20,000 s at 10 calls/s
            for _ in range(10):
                budget.record_call()
            clock.now += 1
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 64 * 1024  # about a window's calls, not 200,000 of them (some 2 MB)
    assert sum(budget.try_spend() for _ in range(30)) == 20  # a fifth of the window's calls


def test_bulkhead_refuses_beyond_its_cap() -> None:
    bulkhead = Bulkhead(2)
    assert bulkhead.try_acquire() and bulkhead.try_acquire()
    assert not bulkhead.try_acquire()
    bulkhead.release()
    assert bulkhead.try_acquire()


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2)
    rng = random.Random(7)
    delays = [backoff.delay(retry, rng) for retry in (1, 2, 3, 4, 5) for _ in range(200)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert max(backoff.delay(1, rng) for _ in range(200)) <= 0.1
    assert min(delays) < 0.01  # full jitter reaches down to zero
