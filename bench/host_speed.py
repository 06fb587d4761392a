"""How fast this host runs Python now. On a shared virtual machine that moves between runs and
within one (by up to 1.8x within an hour on one machine: bench/README.md, 2026-12-02), so
benchmarks print it beside their figures."""

from __future__ import annotations

import time

ADDITIONS = 10_000_000


def loop_seconds(additions: int = ADDITIONS) -> float:
    """Seconds a Python loop of `additions` integer additions takes here, now."""
    started = time.perf_counter()
    total = 0
    for i in range(additions):
        total += i
    return time.perf_counter() - started


def line(*readings: tuple[str, float]) -> str:
    """The host's speed at points of a run, for its report: ("before the rounds", 0.72), …"""
    return f"host speed: a loop of {ADDITIONS:,} additions took " + ", ".join(
        f"{seconds:.2f} s {when}" for when, seconds in readings
    )
