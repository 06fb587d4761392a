"""Overload protection: shed what cannot be served in time instead of queueing it.

`AdaptiveLimit` is Kratos' BBR limiter: the concurrency a server can carry is what Little's law
gives at its best measured rate, max completions/s x min latency (both over a rolling window),
with room for as much again (and for at least 50 ms of queueing).
While the process is busy (CPU at or above a threshold, or within a second of the last shed),
a call beyond that many in flight is refused; a fixed `max_in_flight` caps in-flight calls
whatever the load. `OverloadProtection` is the server middleware: a refused call gets
RESOURCE_EXHAUSTED at once, with `grpc-retry-pushback-ms` (honoured by libs.rpcclient) and an
ErrorInfo `OVERLOADED`; a call whose deadline passed while it waited to start gets
DEADLINE_EXCEEDED without its handler running. Streams are only checked for the deadline: they
live long, and their length says nothing about the server's speed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from libs.runtime.config import ServiceSettings
from libs.runtime.middleware import Behavior, Context, MethodInfo, before_each_call
from libs.runtime.rich_status import STATUS_DETAILS_KEY, build_status

PUSHBACK_KEY = "grpc-retry-pushback-ms"
OVERLOADED = "OVERLOADED"
log = logging.getLogger("emporium.rpc")


class AdaptiveLimit:
    """How many calls may be in flight now (BBR: max rate x min latency while busy)."""

    BUCKETS = 50
    COOL_DOWN_SECONDS = 1.0
    # Admitted calls may queue for about as long again as they take (in flight up to twice the
    # bandwidth-delay product), and for at least QUEUE_SECONDS: at exactly 1x, or with calls of a
    # millisecond, a server merely at capacity would shed on every jitter, long before anyone's
    # deadline is in danger.
    TOLERANCE = 2.0
    QUEUE_SECONDS = 0.05

    def __init__(
        self,
        *,
        max_in_flight: int,
        cpu_threshold: float,
        window_seconds: float,
        min_in_flight: int = 1,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        if max_in_flight < 1 or window_seconds <= 0 or cpu_threshold <= 0 or min_in_flight < 1:
            raise ValueError(
                "max_in_flight >= 1, min_in_flight >= 1, window_seconds > 0 and cpu_threshold > 0"
            )
        self.max_in_flight = max_in_flight
        # The adaptive limit never goes below this (Netflix concurrency-limits' minLimit): a
        # cold or noisy window must not shed a burst the server serves in milliseconds.
        self.min_in_flight = min_in_flight
        self.cpu_threshold = cpu_threshold
        self.in_flight = 0
        self._bucket_seconds = window_seconds / self.BUCKETS
        self._clock = clock
        self._cpu_clock = cpu_clock
        # Per finished bucket: (completions per second, mean latency in seconds), newest last.
        self._history: deque[tuple[float, float]] = deque(maxlen=self.BUCKETS)
        self._bucket_start = clock()
        self._passed = 0
        self._latency_sum = 0.0
        self._cpu_at_bucket_start = cpu_clock()
        self.cpu = 0.0  # the process's CPU use over the last bucket (1.0 = one core)
        self._last_shed = -math.inf

    def bbr_limit(self) -> float:
        """max completions per second x max(TOLERANCE x min mean latency, QUEUE_SECONDS), over
        the window (inf until measured)."""
        if not self._history:
            return math.inf
        max_rate = max(rate for rate, _ in self._history)
        min_latency = min(latency for rate, latency in self._history if rate)
        return max(1.0, max_rate * max(self.TOLERANCE * min_latency, self.QUEUE_SECONDS))

    def admit(self) -> bool:
        """Takes a slot (give it back with `release`) or says the call must be shed."""
        now = self._clock()
        self._roll(now)
        if self.in_flight >= self.max_in_flight or (
            (self.cpu >= self.cpu_threshold or now - self._last_shed < self.COOL_DOWN_SECONDS)
            and self.in_flight >= max(self.bbr_limit(), self.min_in_flight)
        ):
            self._last_shed = now
            return False
        self.in_flight += 1
        return True

    @classmethod
    def of(cls, settings: ServiceSettings) -> AdaptiveLimit:
        """The limit a server's settings describe (`<SERVICE>_MAX_IN_FLIGHT`, …)."""
        return cls(
            max_in_flight=settings.max_in_flight,
            min_in_flight=settings.min_in_flight,
            cpu_threshold=settings.overload_cpu_threshold,
            window_seconds=settings.overload_window_seconds,
        )

    def release(self, started: float) -> None:
        """Gives back a slot taken by a call that started at `started` (this clock)."""
        self.in_flight -= 1
        now = self._clock()
        self._roll(now)
        self._passed += 1
        self._latency_sum += now - started

    def now(self) -> float:
        return self._clock()

    def _roll(self, now: float) -> None:
        elapsed = now - self._bucket_start
        if elapsed < self._bucket_seconds:
            return
        cpu = self._cpu_clock()
        self.cpu = (cpu - self._cpu_at_bucket_start) / elapsed
        self._cpu_at_bucket_start = cpu
        if self._passed:
            self._history.append((self._passed / elapsed, self._latency_sum / self._passed))
        # Idle buckets are history too: a window of silence forgets old measurements.
        for _ in range(min(self.BUCKETS, int(elapsed / self._bucket_seconds) - 1)):
            self._history.append((0, 0.0))
        self._bucket_start = now
        self._passed = 0
        self._latency_sum = 0.0
        if self._history and not any(rate for rate, _ in self._history):
            self._history.clear()


class OverloadProtection:
    """Middleware, outermost after the shutdown gate, so a shed call costs as little as it can."""

    def __init__(self, limit: AdaptiveLimit, domain: str, pushback_ms: int) -> None:
        self.limit = limit
        self.expired = 0  # calls whose deadline had passed before they could start
        self.shed = 0
        status = build_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server is overloaded; retry in {pushback_ms} ms",
            reason=OVERLOADED,
            domain=domain,
            metadata={"retry_after_ms": str(pushback_ms)},
        )
        self._refusal = (
            status.message,
            ((PUSHBACK_KEY, str(pushback_ms)), (STATUS_DETAILS_KEY, status.SerializeToString())),
        )

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        if method.request_streaming or method.response_streaming:
            return before_each_call(method, behavior, self._check_deadline)
        limit = self.limit

        async def protected(request: Any, context: Context) -> Any:
            await self._check_deadline(request, context)
            if not limit.admit():
                self.shed += 1
                message, trailers = self._refusal
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message, trailers)
            started = limit.now()
            try:
                return await behavior(request, context)
            finally:
                limit.release(started)

        return protected

    async def _check_deadline(self, request: Any, context: Context) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self.expired += 1
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call started"
            )
