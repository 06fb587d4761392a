"""Overload protection: shed what cannot be served in time instead of queueing it.

`AdaptiveLimit` decides for each call, at the cost of a few clock reads and comparisons:

- Kratos' BBR limit: the concurrency a server can carry is what Little's law gives at its best
  measured rate, max completions/s x min latency (both over a rolling window), with room for as
  much again (and for at least 50 ms of queueing). While the process is busy (CPU at or above a
  threshold, or within a second of the last call it refused), a
  call beyond that many in flight is refused; a fixed `max_in_flight` caps in-flight calls
  whatever the load.
- The budget: a call whose remaining deadline is less than `budget_factor` x the latency a
  call started now can expect (the lesser of the moving average of finished calls and Little's
  law: the calls in flight over the recent completion rate, at least the window's best mean
  latency) would most likely be answered too late, or just in time for a caller who then has no
  time left to use it: it is refused before any work is spent on it. In equilibrium this keeps
  admitted calls' latency near 1/budget_factor of their deadline.
- The event loop's delay (CoDel's sojourn time): in a one-threaded asyncio server the loop is
  the queue in front of every handler, invisible to the in-flight count. `LoopDelay` measures
  how late a timer runs (a probe every 25 ms, only while calls come in), less the time the
  loop's thread waited for a CPU meanwhile (Linux's schedstat): a loop late because other
  processes had the cores, or because its container's CPU quota ran out, has no queue of its
  own to shed, and its calls' deadlines are the budget rule's to guard. Once that delay has
  stayed above `queue_target` for `queue_interval`, the loop is congested and arrivals with a
  deadline are shed while the delay stays above the target, which drains it (CoDel's rule: a
  standing queue, not a burst). A call without a deadline cannot be late: it waits its turn.

What none of this sees, in grpc.aio 1.75: calls the C core holds before Python asks for them. The
server takes calls one at a time from the core, so when the handlers need all of the CPU
(nothing awaited), the backlog stays in the core while the loop's delay and the calls in flight
stay small; such calls reach the limit with most of their deadline spent, where the budget rule
refuses the ones that cannot make it (bench/README.md, overload).

`OverloadProtection` is the server middleware: a refused call gets RESOURCE_EXHAUSTED at once,
with `grpc-retry-pushback-ms` (honoured by libs.rpcclient) and an ErrorInfo `OVERLOADED`; a call
whose deadline passed while it waited to start gets DEADLINE_EXCEEDED without its handler
running. A server that sheds says so in its log, at most once a second ("shedding load", with
its refusals so far by rule: limit, budget, queue). Streams are only checked for the deadline:
they live long, and their length says nothing about the server's speed.
"""

from __future__ import annotations

import asyncio
import itertools
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


def pushback_ms(trailers: object) -> int | None:
    """The wait a server asked for in its `grpc-retry-pushback-ms` trailer (`trailers`: a call's
    trailing metadata), in milliseconds; -1 if the value is not a non-negative integer, which
    by gRPC's retry design means "do not retry"; None if the server sent none."""
    for key, value in trailers or ():  # type: ignore[attr-defined]
        if key == PUSHBACK_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return int(text) if text.isdigit() else -1
    return None


def run_queue_wait() -> float:
    """Seconds the calling thread has spent runnable but waiting for a CPU, in total (the
    second field of Linux's /proc/thread-self/schedstat, about 10 µs to read); 0.0 where the
    kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class LoopDelay:
    """How late the event loop runs what is ready (CoDel's sojourn time for a loop), less what
    its thread spent waiting for a CPU: a timer every `period` s measures it, and `congested`
    says the delay has stayed at or above `target` for at least `interval` (a standing queue,
    not a burst); it ends with the first measurement below the target. Probing stops after
    `idle_seconds` without a `touch`, so an idle server (or one whose app is gone) schedules
    nothing. `run_queue_wait` reads the loop thread's total wait for a CPU, in seconds."""

    def __init__(
        self,
        *,
        target: float,
        interval: float,
        # Four looks per CoDel interval (100 ms): each look is a wake-up of the process, and
        # one every 10 ms cost a fleet of seven processes about 14 wake-ups per order.
        period: float = 0.025,
        idle_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        run_queue_wait: Callable[[], float] = run_queue_wait,
    ) -> None:
        self.target = target
        self.interval = interval
        self.period = period
        self.idle_seconds = idle_seconds
        self.delay = 0.0  # the last measurement, in seconds
        self.congested = False
        self._clock = clock
        self._above_since: float | None = None
        self._touched = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._waited = run_queue_wait
        self._waited_at_schedule = 0.0

    def touch(self, now: float) -> None:
        """A call came in at `now` (this clock): probe while they do."""
        self._touched = now
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # not in a loop (a test driving the limit by hand)
                return
            self._schedule(self._loop)

    def observe(self, now: float, delay: float) -> None:
        """One measurement: the loop ran something `delay` s later than it was due."""
        self.delay = delay
        if delay < self.target:
            self._above_since = None
            self.congested = False
        elif self._above_since is None:
            self._above_since = now
        elif now - self._above_since >= self.interval:
            self.congested = True

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._waited_at_schedule = self._waited()
        self._due = loop.time() + self.period
        loop.call_at(self._due, self._probe)

    def _probe(self) -> None:
        loop = self._loop
        assert loop is not None
        # Waiting for a CPU since the timer was set (before it was due too) is taken off: a
        # conservative guess of the part of the lateness that was not this loop's own queue.
        starved = self._waited() - self._waited_at_schedule
        late = max(0.0, loop.time() - self._due - starved)
        now = self._clock()
        self.observe(now, late)
        if now - self._touched > self.idle_seconds:
            self._loop = None  # idle: the next call starts probing again
            self.observe(now, 0.0)
            return
        self._schedule(loop)


class AdaptiveLimit:
    """Whether a call may start now: BBR's in-flight limit while busy, the call's budget against
    the latency a call started now can expect, and the event loop's delay (module docstring)."""

    BUCKETS = 50
    COOL_DOWN_SECONDS = 1.0
    # Admitted calls may queue for about as long again as they take (in flight up to twice the
    # bandwidth-delay product), and for at least QUEUE_SECONDS: at exactly 1x, or with calls of a
    # millisecond, a server merely at capacity would shed on every jitter, long before anyone's
    # deadline is in danger.
    TOLERANCE = 2.0
    QUEUE_SECONDS = 0.05
    # Weight of each finished call in the moving average of latency (about the last 20 calls),
    # the budget rule's estimate before a completion rate is measured.
    LATENCY_WEIGHT = 0.05
    # The completion rate "now", for the budget rule: over the last this many buckets (a tenth
    # of the window: half a second by default).
    RECENT_BUCKETS = 5
    # While shedding, one log line ("shedding load") per this many seconds at most.
    REPORT_SECONDS = 1.0

    def __init__(
        self,
        *,
        max_in_flight: int,
        cpu_threshold: float,
        window_seconds: float,
        min_in_flight: int = 1,
        budget_factor: float = 0.0,
        queue_target: float = 0.0,
        queue_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        if max_in_flight < 1 or window_seconds <= 0 or cpu_threshold <= 0 or min_in_flight < 1:
            raise ValueError(
                "max_in_flight >= 1, min_in_flight >= 1, window_seconds > 0 and cpu_threshold > 0"
            )
        if budget_factor < 0 or queue_target < 0 or queue_interval <= 0:
            raise ValueError("budget_factor >= 0, queue_target >= 0 and queue_interval > 0")
        # 0 turns the budget rule off; the event loop is watched when queue_target > 0.
        self.budget_factor = budget_factor
        self.latency = 0.0  # moving average of finished calls' latency, in seconds
        self.loop_delay = (
            LoopDelay(target=queue_target, interval=queue_interval, clock=clock)
            if queue_target > 0
            else None
        )
        # Why calls were refused, for benchmarks and tests.
        self.refused = {"limit": 0, "budget": 0, "queue": 0}
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
        self._last_release = -math.inf
        self._last_report = -math.inf

    def bbr_limit(self) -> float:
        """max completions per second x max(TOLERANCE x min mean latency, QUEUE_SECONDS), over
        the window (inf until measured)."""
        if not self._history:
            return math.inf
        max_rate = max(rate for rate, _ in self._history)
        min_latency = min(latency for rate, latency in self._history if rate)
        return max(1.0, max_rate * max(self.TOLERANCE * min_latency, self.QUEUE_SECONDS))

    def expected_latency(self) -> float:
        """What a call started now should take: the lesser of two estimates, each wrong one way.
        The moving average of finished calls lags by as long as they took: after a burst it
        went on refusing while the admitted calls drained, the machine idle (bench/README.md,
        overload). The calls in flight over the recent completion rate (Little's law, at least
        the window's best mean latency) follows the queue as it drains, but on a server that
        was quiet the rate is the quiet one's, and a burst it would serve in milliseconds looks
        like seconds of queue."""
        recent = list(itertools.islice(reversed(self._history), self.RECENT_BUCKETS))
        rate = sum(rate for rate, _ in recent) / len(recent) if recent else 0.0
        if rate <= 0:
            return self.latency
        best = min((latency for rate, latency in self._history if rate), default=0.0)
        return min(self.latency, max(best, self.in_flight / rate))

    def admit(self, remaining: float | None = None) -> bool:
        """Takes a slot (give it back with `release`) or says the call must be shed;
        `remaining` is the call's deadline in seconds from now, if it has one."""
        now = self._clock()
        self._roll(now)
        delay = self.loop_delay
        congested = False
        if delay is not None:
            delay.touch(now)
            congested = delay.congested
            # Only a call with a deadline: its wait in the loop eats it. One with none cannot
            # be late; it waits its turn (the in-flight limits still apply).
            if congested and delay.delay >= delay.target and remaining is not None:
                return self._refuse(now, "queue")
        if (
            remaining is not None
            # (The estimate is never above the moving average: most calls stop at the first.)
            and remaining < self.budget_factor * self.latency
            and remaining < self.budget_factor * self.expected_latency()
            # A stale estimate must not refuse forever: once nothing has finished for as long
            # as a call takes (and a second), calls are let in to measure again.
            and now - self._last_release < max(self.latency, self.COOL_DOWN_SECONDS)
        ):
            return self._refuse(now, "budget")
        if self.in_flight >= self.max_in_flight or (
            (self.cpu >= self.cpu_threshold or now - self._last_shed < self.COOL_DOWN_SECONDS)
            and self.in_flight >= max(self.bbr_limit(), self.min_in_flight)
        ):
            return self._refuse(now, "limit")
        self.in_flight += 1
        return True

    def _refuse(self, now: float, why: str) -> bool:
        if why == "limit":
            # Keeps the limit applied for a second (Kratos' cool-down). Refusals by budget or
            # queue do not: the in-flight limit would then cap a server that is not at its
            # limit (a gateway waiting on slow upstreams), and throughput with it.
            self._last_shed = now
        self.refused[why] += 1
        if now - self._last_report >= self.REPORT_SECONDS:
            self._last_report = now
            delay = self.loop_delay.delay if self.loop_delay is not None else 0.0
            extra = {
                "refused": dict(self.refused),  # since the start, by rule
                "in_flight": self.in_flight,
                "latency_ms": round(self.latency * 1000, 1),
                "expected_latency_ms": round(self.expected_latency() * 1000, 1),
                "loop_delay_ms": round(delay * 1000, 1),
                "cpu": round(self.cpu, 2),
            }
            log.warning("shedding load", extra=extra)
        return False

    @classmethod
    def of(cls, settings: ServiceSettings) -> AdaptiveLimit:
        """The limit a server's settings describe (`<SERVICE>_MAX_IN_FLIGHT`, …)."""
        return cls(
            max_in_flight=settings.max_in_flight,
            min_in_flight=settings.min_in_flight,
            cpu_threshold=settings.overload_cpu_threshold,
            window_seconds=settings.overload_window_seconds,
            budget_factor=settings.overload_budget_factor,
            queue_target=settings.overload_queue_target_ms / 1000,
            queue_interval=settings.overload_queue_interval_ms / 1000,
        )

    def release(self, started: float) -> None:
        """Gives back a slot taken by a call that started at `started` (this clock)."""
        self.in_flight -= 1
        now = self._clock()
        self._roll(now)
        latency = now - started
        self._last_release = now
        self._passed += 1
        self._latency_sum += latency
        self.latency += (latency - self.latency) * self.LATENCY_WEIGHT

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
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                await self._expired(context)
            if not limit.admit(remaining):
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
            await self._expired(context)

    async def _expired(self, context: Context) -> None:
        self.expired += 1
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call started"
        )
