"""Overload protection: shed calls get RESOURCE_EXHAUSTED with a pushback and ErrorInfo at once,
and a call whose deadline passed while it waited is never started, nor one whose budget is
shorter than the server's current latency; the event loop's delay is measured and a standing
queue sheds arrivals. Behaviour, not speed: the limit's decisions run on clocks the tests move."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest as Request
from grpc_health.v1.health_pb2 import HealthCheckResponse as Response

from libs.runtime.config import ServiceSettings
from libs.runtime.overload import PUSHBACK_KEY, AdaptiveLimit, LoopDelay, run_queue_wait
from libs.runtime.processes import start_service
from libs.server.grpc_app import GrpcApp
from libs.testing.rpc import rich_error, serving

CODEC: dict[str, Any] = {
    "request_deserializer": Request.FromString,
    "response_serializer": Response.SerializeToString,
}
log = logging.getLogger("emporium.test")
STUB_CODEC: dict[str, Any] = {
    "request_serializer": Request.SerializeToString,
    "response_deserializer": Response.FromString,
}


class Holder:
    """test.Holder/Hold records each call it starts (by `service`), then waits for `release`
    unless the call is named `quick`."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()
        self.holding = asyncio.Condition()
        self.thaw: socket.socket | None = None

    async def Hold(
        self, request: Request, context: grpc.aio.ServicerContext[object, object]
    ) -> Response:
        self.started.append(request.service)
        async with self.holding:
            self.holding.notify_all()
        if request.service != "quick":
            await self.release.wait()
        return Response(status=Response.SERVING)

    async def Freeze(
        self, request: Request, context: grpc.aio.ServicerContext[object, object]
    ) -> Response:
        """Blocks the whole event loop (on purpose: calls arriving now queue up) until a byte
        comes on the test's socket."""
        self.started.append("freeze")
        assert self.thaw is not None
        log.info("frozen")
        self.thaw.recv(1)
        return Response(status=Response.SERVING)


def add_holder(holder: Holder, server: grpc.aio.Server) -> None:
    server.add_registered_method_handlers(  # type: ignore[attr-defined]
        "test.Holder",
        {
            "Hold": grpc.unary_unary_rpc_method_handler(holder.Hold, **CODEC),
            "Freeze": grpc.unary_unary_rpc_method_handler(holder.Freeze, **CODEC),
        },
    )


def holder_app(**settings: Any) -> tuple[GrpcApp, Holder]:
    app = GrpcApp("test", ServiceSettings(reflection=False, **settings), domain="test.emporium.dev")
    holder = Holder()
    app.add_servicer(add_holder, holder)
    return app, holder


async def test_calls_beyond_the_limit_get_resource_exhausted_with_pushback() -> None:
    app, holder = holder_app(max_in_flight=2, retry_pushback_ms=300)
    async with serving(app) as channel:
        hold = channel.unary_unary("/test.Holder/Hold", **STUB_CODEC)
        first = asyncio.ensure_future(hold(Request(service="first")))
        second = asyncio.ensure_future(hold(Request(service="second")))
        async with holder.holding:
            await asyncio.wait_for(holder.holding.wait_for(lambda: len(holder.started) == 2), 10)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hold(Request(service="third"), timeout=10)
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.info is not None
        assert (error.info.reason, error.info.domain) == ("OVERLOADED", "test.emporium.dev")
        assert error.info.metadata["retry_after_ms"] == "300"
        assert caught.value.trailing_metadata()[PUSHBACK_KEY] == "300"  # type: ignore[call-overload]
        # the shed call never reached the handler
        assert sorted(holder.started) == ["first", "second"]

        holder.release.set()
        assert (await first).status == Response.SERVING
        assert (await second).status == Response.SERVING
        assert (await hold(Request(service="fourth"), timeout=10)).status == Response.SERVING
    assert sorted(holder.started) == ["first", "fourth", "second"]


async def test_a_call_whose_deadline_passed_while_queued_is_never_started() -> None:
    # The server runs in its own process (tests/holder_server.py), so blocking its event loop
    # leaves this one running; Freeze blocks it until this test sends a byte on `thaw`.
    listener = socket.create_server(("127.0.0.1", 0))
    server = await start_service(
        "libs.runtime.tests.holder_server",
        {"HOLDER_THAW_PORT": str(listener.getsockname()[1]), "EMPORIUM_SECURITY": "insecure"},
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            hold = channel.unary_unary("/test.Holder/Hold", **STUB_CODEC)
            freeze = channel.unary_unary("/test.Holder/Freeze", **STUB_CODEC)
            frozen = asyncio.ensure_future(freeze(Request(), timeout=30))
            listener.settimeout(30)
            thaw, _ = await asyncio.to_thread(listener.accept)
            await server.wait_for_log("frozen")

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await hold(Request(service="late"), timeout=0.3)
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

            thaw.sendall(b"x")
            await frozen
            await hold(Request(service="quick"), timeout=10)
            thaw.close()
    finally:
        listener.close()
        await server.terminate()
    stopped = next(line for line in server.log_lines if line.get("message") == "holder stopped")
    # Here gRPC itself drops the late call (it expired before the server asked for it); a call
    # handed over before its deadline and reached after it is refused by OverloadProtection.
    assert stopped["started"] == ["freeze", "quick"]


class Clocks:
    """A wall clock and a process CPU clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 10.0

    def advance(self, seconds: float, cpu_share: float) -> None:
        self.wall += seconds
        self.cpu += seconds * cpu_share


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def limit_on(clocks: Clocks, max_in_flight: int = 1000, min_in_flight: int = 1) -> AdaptiveLimit:
    # a 50 s window: buckets of 1 s (round numbers, exact in floating point)
    return AdaptiveLimit(
        max_in_flight=max_in_flight,
        min_in_flight=min_in_flight,
        cpu_threshold=0.8,
        window_seconds=50.0,
        clock=lambda: clocks.wall,
        cpu_clock=lambda: clocks.cpu,
    )


def serve_bucket(
    limit: AdaptiveLimit, clocks: Clocks, calls: int, latency: float, cpu: float
) -> None:
    """`calls` calls of `latency` s each start and finish within one 1 s bucket."""
    started = clocks.wall
    assert fill(limit, calls) == [True] * calls
    clocks.advance(latency, cpu)
    for _ in range(calls):
        limit.release(started)
    clocks.advance(1.0 - latency, cpu)


def fill(limit: AdaptiveLimit, count: int) -> list[bool]:
    return [limit.admit() for _ in range(count)]


def test_a_busy_server_sheds_beyond_max_rate_times_min_latency(clocks: Clocks) -> None:
    limit = limit_on(clocks)
    for _ in range(5):  # 20 calls per second, 0.5 s each: Little's law gives 10, tolerance 2
        serve_bucket(limit, clocks, calls=20, latency=0.5, cpu=0.5)
    clocks.advance(4.0, 0.95)  # then the process gets busy
    assert limit.bbr_limit() == pytest.approx(20.0)
    assert fill(limit, 22) == [True] * 20 + [False] * 2


def test_a_busy_server_still_admits_up_to_min_in_flight(clocks: Clocks) -> None:
    limit = limit_on(clocks, min_in_flight=30)
    for _ in range(5):  # the adaptive limit is 20, as above
        serve_bucket(limit, clocks, calls=20, latency=0.5, cpu=0.5)
    clocks.advance(4.0, 0.95)
    assert limit.bbr_limit() == pytest.approx(20.0)
    assert fill(limit, 32) == [True] * 30 + [False] * 2


def test_an_idle_server_admits_a_burst_beyond_the_adaptive_limit(clocks: Clocks) -> None:
    limit = limit_on(clocks)
    for _ in range(5):
        serve_bucket(limit, clocks, calls=20, latency=0.5, cpu=0.3)
    clocks.advance(1.0, 0.3)
    assert fill(limit, 40) == [True] * 40


def test_max_in_flight_caps_calls_whatever_the_load(clocks: Clocks) -> None:
    limit = limit_on(clocks, max_in_flight=3)
    assert fill(limit, 4) == [True, True, True, False]
    limit.release(clocks.wall)
    assert limit.admit()


def test_shedding_stops_once_the_load_is_gone(clocks: Clocks) -> None:
    limit = limit_on(clocks)
    for _ in range(5):
        serve_bucket(limit, clocks, calls=20, latency=0.5, cpu=0.5)
    clocks.advance(4.0, 0.95)
    assert fill(limit, 21)[-1] is False
    for _ in range(20):
        limit.release(clocks.wall)
    clocks.advance(1.5, 0.1)  # past the cool-down, the process idle
    assert fill(limit, 30) == [True] * 30


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        AdaptiveLimit(max_in_flight=0, cpu_threshold=0.8, window_seconds=5)


def limit_with(clocks: Clocks, **options: Any) -> AdaptiveLimit:
    return AdaptiveLimit(
        max_in_flight=1000,
        cpu_threshold=0.8,
        window_seconds=50.0,
        clock=lambda: clocks.wall,
        cpu_clock=lambda: clocks.cpu,
        **options,
    )


def finish_one(limit: AdaptiveLimit, clocks: Clocks, latency: float) -> None:
    assert limit.admit()
    started = clocks.wall
    clocks.advance(latency, 0.1)
    limit.release(started)


def test_a_call_whose_budget_is_shorter_than_the_servers_latency_is_refused(
    clocks: Clocks,
) -> None:
    limit = limit_with(clocks, budget_factor=2.0)
    for _ in range(200):  # the moving average settles at 0.25 s
        finish_one(limit, clocks, 0.25)
    assert limit.latency == pytest.approx(0.25, abs=1e-4)
    assert limit.admit(remaining=0.49) is False  # less than 2 x 0.25 s left
    assert limit.refused["budget"] == 1
    assert limit.admit(remaining=0.51) is True
    assert limit.admit(remaining=None) is True  # no deadline: nothing to miss
    assert limit.in_flight == 2


def test_a_stale_latency_estimate_does_not_refuse_forever(clocks: Clocks) -> None:
    limit = limit_with(clocks, budget_factor=2.0)
    for _ in range(200):
        finish_one(limit, clocks, 2.0)  # a slow spell: 2 s per call
    assert limit.admit(remaining=1.0) is False
    clocks.advance(1.9, 0.0)
    assert limit.admit(remaining=1.0) is False
    clocks.advance(0.2, 0.0)  # nothing has finished for longer than a call takes: measure again
    assert limit.admit(remaining=1.0) is True


def test_the_budget_admits_again_as_soon_as_the_queue_has_drained(clocks: Clocks) -> None:
    """After a burst, the calls that just finished took long, and their moving average would
    refuse for a while yet; the calls in flight over the recent completion rate (Little's law)
    say nobody is ahead any more, and the lesser estimate admits at once."""
    limit = limit_with(clocks, budget_factor=2.0)
    for _ in range(50):  # 0.1 s a call, 10 a second
        finish_one(limit, clocks, 0.1)
    assert fill(limit, 40) == [True] * 40  # a burst (no deadlines: admitted whatever the queue)
    started = clocks.wall
    clocks.advance(1.5, 0.5)
    for _ in range(40):
        limit.release(started)
    assert limit.latency > 0.5  # twice the moving average is more than a second
    assert limit.admit(remaining=1.0) is True  # nobody ahead: its own 0.1 s
    assert limit.refused["budget"] == 0


def test_a_burst_on_a_quiet_server_is_not_refused_for_its_quiet_rate(clocks: Clocks) -> None:
    """A server that finished one call a second has a completion rate of one a second; fifty
    arrivals at once are not fifty seconds of queue when each takes 10 ms."""
    limit = limit_with(clocks, budget_factor=2.0)
    for _ in range(10):
        finish_one(limit, clocks, 0.01)
        clocks.advance(0.99, 0.0)
    assert [limit.admit(remaining=2.0) for _ in range(50)] == [True] * 50


def test_the_budget_rule_is_off_at_factor_zero(clocks: Clocks) -> None:
    limit = limit_with(clocks, budget_factor=0.0)
    for _ in range(50):
        finish_one(limit, clocks, 1.0)
    assert limit.admit(remaining=0.001) is True


def test_the_loop_is_congested_only_once_its_delay_stands_for_an_interval() -> None:
    delay = LoopDelay(target=0.02, interval=0.1)
    delay.observe(0.00, 0.05)  # above the target from here on
    delay.observe(0.05, 0.05)
    assert not delay.congested  # a burst, not yet a standing queue
    delay.observe(0.10, 0.03)
    assert delay.congested
    delay.observe(0.15, 0.01)  # the first measurement below the target ends it
    assert not delay.congested
    delay.observe(0.20, 0.05)
    delay.observe(0.25, 0.01)  # above, below, above: the interval starts over each time
    delay.observe(0.30, 0.05)
    delay.observe(0.39, 0.05)
    assert not delay.congested


def test_arrivals_are_shed_while_the_loop_is_congested(clocks: Clocks) -> None:
    limit = limit_with(clocks, queue_target=0.02, queue_interval=0.1)
    delay = limit.loop_delay
    assert delay is not None
    assert limit.admit()
    delay.observe(clocks.wall, 0.05)
    clocks.advance(0.125, 0.5)
    delay.observe(clocks.wall, 0.05)
    assert delay.congested
    assert limit.admit(remaining=1.0) is False
    assert limit.refused["queue"] == 1
    assert limit.admit() is True  # no deadline: it cannot be late, it waits its turn
    delay.observe(clocks.wall, 0.001)  # drained
    assert limit.admit(remaining=1.0) is True


async def test_the_probe_measures_a_blocked_loop() -> None:
    measured = asyncio.Event()

    class Recorded(LoopDelay):
        def observe(self, now: float, delay: float) -> None:
            super().observe(now, delay)
            if delay > 0:
                measured.set()

    # (No wait for a CPU is taken off here: the machine's load must not change the reading.)
    probe = Recorded(target=0.02, interval=0.1, period=0.01, run_queue_wait=lambda: 0.0)
    probe.touch(time.monotonic())  # the first timer is due 10 ms from now
    time.sleep(0.1)  # noqa: ASYNC251 — the point: the loop is blocked, so the timer runs late
    await measured.wait()
    assert probe.delay >= 0.08


async def test_the_probe_takes_off_the_time_the_loop_waited_for_a_cpu() -> None:
    """A loop late only because its thread waited for a CPU (other processes had the cores, or
    the container's quota ran out) has no queue of its own: it is not congested."""
    measured = asyncio.Event()
    waits = iter([0.0, 0.1])  # total wait for a CPU when the timer is set, then at the probe

    class Recorded(LoopDelay):
        def observe(self, now: float, delay: float) -> None:
            super().observe(now, delay)
            measured.set()

    probe = Recorded(target=0.02, interval=0.1, period=0.01, run_queue_wait=lambda: next(waits))
    probe.touch(time.monotonic())
    time.sleep(0.1)  # noqa: ASYNC251 — the timer runs 90 ms late; the thread "waited" 100 ms
    await measured.wait()
    assert probe.delay < probe.target


def test_run_queue_wait_counts_the_time_a_busy_thread_waits_for_its_cpu() -> None:
    """The reader is Linux's own figure: spinning on one CPU shared with two busy processes,
    this thread gets about a third of it and waits the rest."""
    cpu = min(os.sched_getaffinity(0))
    original = os.sched_getaffinity(0)
    rivals = [
        subprocess.Popen(
            [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile 1: pass"]
        )
        for _ in range(2)
    ]
    try:
        os.sched_setaffinity(0, {cpu})  # this thread only
        before = run_queue_wait()
        spin_until = time.monotonic() + 0.4
        while time.monotonic() < spin_until:
            pass
        waited = run_queue_wait() - before
    finally:
        os.sched_setaffinity(0, original)
        for rival in rivals:
            rival.kill()
            rival.wait()
    assert waited >= 0.1


async def test_a_call_without_the_budget_for_the_servers_latency_is_shed_unstarted() -> None:
    # A factor so high that any measured latency exceeds every budget: after one call has
    # finished, a call with a deadline is refused; one without a deadline is not.
    app, holder = holder_app(overload_budget_factor=1e9, retry_pushback_ms=400)
    async with serving(app) as channel:
        hold = channel.unary_unary("/test.Holder/Hold", **STUB_CODEC)
        assert (await hold(Request(service="quick"), timeout=30)).status == Response.SERVING

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hold(Request(service="quick"), timeout=30)
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.info is not None and error.info.reason == "OVERLOADED"
        assert caught.value.trailing_metadata()[PUSHBACK_KEY] == "400"  # type: ignore[call-overload]
        assert holder.started == ["quick"]  # the refused call never started

        holder.release.set()
        assert (await hold(Request(service="no deadline"))).status == Response.SERVING
    assert app.overload is not None
    assert app.overload.limit.refused["budget"] == 1
    assert holder.started == ["quick", "no deadline"]
