"""The client kit against a real upstream server on port 0 whose behaviour each test scripts:
retries and their limits, the retry budget, the circuit breaker (unary and server streaming),
the bulkhead, and deadlines that propagate from a handler to its outbound calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest as Request
from grpc_health.v1.health_pb2 import HealthCheckResponse as Response
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from libs.resilience.backoff import Backoff
from libs.resilience.breaker import BreakerPolicy, BreakerState
from libs.resilience.budget import BudgetPolicy
from libs.rpcclient.upstream import Upstream, UpstreamPolicy, upstream_errors
from libs.runtime.config import ServiceSettings
from libs.server.grpc_app import GrpcApp
from libs.testing.rpc import rich_error, serving

SERVING = Response(status=Response.SERVING)
FAST = Backoff(initial=0.001, maximum=0.005)
NO_BREAKER = BreakerPolicy(min_calls=10**9)


@dataclass
class Script:
    """What the upstream does; what it saw."""

    fail_next: int = 0
    fail_always: bool = False
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    pushback_ms: str | None = None
    hold: asyncio.Event | None = None
    hold_after_first: asyncio.Event | None = None
    sleep: float = 0.0
    attempts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptedHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, script: Script) -> None:
        self.script = script

    async def _behave(self, context: Any) -> None:
        script = self.script
        script.attempts += 1
        script.arrived.set()
        try:
            if script.hold is not None:
                await script.hold.wait()
            if script.sleep:
                await asyncio.sleep(script.sleep)
        except asyncio.CancelledError:
            script.cancelled.set()
            raise
        if script.fail_always or script.fail_next > 0:
            script.fail_next -= 1
            trailers = (
                (("grpc-retry-pushback-ms", script.pushback_ms),)
                if script.pushback_ms is not None
                else ()
            )
            await context.abort(script.code, "scripted failure", trailers)

    async def Check(self, request: Request, context: Any) -> Response:
        await self._behave(context)
        return SERVING

    async def Watch(self, request: Request, context: Any) -> AsyncIterator[Response]:
        await self._behave(context)
        yield SERVING
        if self.script.hold_after_first is not None:
            await self.script.hold_after_first.wait()
        yield SERVING


@pytest.fixture
async def upstream_server() -> AsyncIterator[tuple[str, Script]]:
    script = Script()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(ScriptedHealth(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", script
    await server.stop(None)


@pytest.fixture(scope="module")
def metrics_reader() -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def metric_sum(reader: InMemoryMetricReader, name: str, attributes: dict[str, str]) -> float:
    """The current value of a counter for one attribute set (0 if never recorded)."""
    data = reader.get_metrics_data()
    total = 0.0
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        if dict(point.attributes or {}) == attributes:
                            total += point.value  # type: ignore[union-attr]
    return total


OPEN_REJECTIONS = {"upstream": "health", "reason": "CIRCUIT_OPEN"}
BREAKER = {"upstream": "health"}


class FakeClock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def make(address: str, clock: Any = time.monotonic, **policy: Any) -> tuple[Upstream, Any]:
    settings: dict[str, Any] = {
        "backoff": FAST,
        "breaker": NO_BREAKER,
        "idempotent": frozenset({"Check", "Watch"}),
    }
    settings.update(policy)
    upstream = Upstream(
        "health", grpc.aio.insecure_channel(address), UpstreamPolicy(**settings), clock=clock
    )
    return upstream, upstream.stub(health_pb2_grpc.HealthStub)


async def test_unavailable_three_times_then_success_on_attempt_four(
    upstream_server: tuple[str, Script], metrics_reader: InMemoryMetricReader
) -> None:
    address, script = upstream_server
    retried = metric_sum(metrics_reader, "rpc.client.retries", {"upstream": "health"})
    script.fail_next = 3
    upstream, stub = make(address)
    assert (await stub.Check(Request())).status == Response.SERVING
    assert script.attempts == 4
    assert (upstream.stats.attempts, upstream.stats.retries) == (4, 3)
    assert metric_sum(metrics_reader, "rpc.client.retries", {"upstream": "health"}) - retried == 3
    await upstream.close()


async def test_a_stub_is_made_once_per_class_and_upstream(
    upstream_server: tuple[str, Script],
) -> None:
    """Callers may ask for the stub per request (payments does, per payment): they get the
    one already wrapped, whose calls count in the same upstream."""
    address, script = upstream_server
    upstream, stub = make(address)
    again = upstream.stub(health_pb2_grpc.HealthStub)
    assert again is stub
    assert (await again.Check(Request())).status == Response.SERVING
    assert upstream.stats.attempts == script.attempts == 1
    await upstream.close()


async def test_client_errors_and_non_idempotent_methods_are_tried_once(
    upstream_server: tuple[str, Script],
) -> None:
    address, script = upstream_server
    script.fail_next, script.code = 3, grpc.StatusCode.INVALID_ARGUMENT
    upstream, stub = make(address)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(Request())
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert script.attempts == 1
    await upstream.close()

    script.attempts, script.fail_next, script.code = 0, 3, grpc.StatusCode.UNAVAILABLE
    upstream, stub = make(address, idempotent=frozenset())  # Health.Check declares nothing
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Check(Request())
    assert script.attempts == 1
    await upstream.close()


async def test_resource_exhausted_is_retried_only_with_pushback(
    upstream_server: tuple[str, Script],
) -> None:
    address, script = upstream_server
    script.fail_next, script.code = 1, grpc.StatusCode.RESOURCE_EXHAUSTED
    upstream, stub = make(address)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Check(Request())
    assert script.attempts == 1

    script.attempts, script.fail_next, script.pushback_ms = 0, 1, "5"
    assert (await stub.Check(Request())).status == Response.SERVING
    assert script.attempts == 2

    script.attempts, script.fail_next, script.pushback_ms = 0, 1, "-1"  # "do not retry"
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Check(Request())
    assert script.attempts == 1
    await upstream.close()


async def test_retry_budget_bounds_attempts_while_upstream_fails_every_call(
    upstream_server: tuple[str, Script],
) -> None:
    address, script = upstream_server
    script.fail_always = True
    # Shorter than the budget's window: the bound holds per window (older retries leave it and
    # free room), so over a run longer than the window the totals may legitimately exceed it.
    seconds = 8.0
    upstream, stub = make(address, budget=BudgetPolicy(ratio=0.2, min_per_second=10, window=10))
    stop_at = time.monotonic() + seconds
    calls = 0

    async def caller() -> None:
        nonlocal calls
        while time.monotonic() < stop_at:
            calls += 1
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Check(Request())

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(8)))
    # The floor is 10 retries per second for as long as the calls went on (the last ones end
    # after stop_at; on a loaded machine, noticeably so).
    elapsed = max(seconds, time.monotonic() - started)
    assert script.attempts <= 1.2 * calls + 10 * elapsed
    assert script.attempts > calls  # retries did happen, within the budget
    await upstream.close()


async def test_open_breaker_fails_fast_and_sends_nothing(
    upstream_server: tuple[str, Script], metrics_reader: InMemoryMetricReader
) -> None:
    address, script = upstream_server
    rejected = metric_sum(metrics_reader, "rpc.client.rejections", OPEN_REJECTIONS)
    opened = metric_sum(metrics_reader, "rpc.client.breaker.open", BREAKER)
    script.fail_always = True
    upstream, stub = make(
        address, max_attempts=1, breaker=BreakerPolicy(min_calls=10, failure_rate=0.5, cooldown=60)
    )
    for _ in range(10):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Check(Request())
    assert upstream.breaker.state is BreakerState.OPEN
    seen = script.attempts
    slowest = 0.0
    for _ in range(100):
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(Request())
        slowest = max(slowest, time.perf_counter() - started)
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert error.info is not None and error.info.reason == "CIRCUIT_OPEN"
    assert script.attempts == seen  # nothing reached the upstream while open
    # Fails fast: waits for nothing (not the deadline, not the cooldown). The bound leaves room
    # for a slow, busy machine (one refusal among 100 took 5.8 ms on one), far below any wait.
    assert slowest < 0.1
    assert upstream.stats.rejected_open == 100
    assert upstream.stats.state_changes == [("closed", "open")]
    assert metric_sum(metrics_reader, "rpc.client.rejections", OPEN_REJECTIONS) - rejected == 100
    assert metric_sum(metrics_reader, "rpc.client.breaker.open", BREAKER) - opened == 1
    await upstream.close()


@pytest.mark.parametrize("kind", ["unary", "server_streaming"])
async def test_half_open_lets_exactly_one_probe_through_50_callers(
    upstream_server: tuple[str, Script], kind: str
) -> None:
    address, script = upstream_server
    clock = FakeClock()
    upstream, stub = make(
        address,
        clock=clock,
        max_attempts=1,
        breaker=BreakerPolicy(consecutive_failures=3, cooldown=5),
    )
    script.fail_next = 3

    async def call() -> None:
        if kind == "unary":
            await stub.Check(Request())
        else:
            assert len([r async for r in stub.Watch(Request())]) == 2

    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await call()
    assert upstream.breaker.state is BreakerState.OPEN
    clock.now += 5  # the cooldown has passed
    script.attempts, script.hold = 0, asyncio.Event()
    script.arrived.clear()
    results = [asyncio.ensure_future(call()) for _ in range(50)]
    await script.arrived.wait()  # the probe is at the upstream, held there
    script.hold.set()
    outcomes = await asyncio.gather(*results, return_exceptions=True)
    assert script.attempts == 1
    assert sum(1 for o in outcomes if o is None) == 1
    rejected = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(rejected) == 49
    assert all(rich_error(e).info.reason == "CIRCUIT_OPEN" for e in rejected)  # type: ignore[union-attr]
    assert upstream.breaker.state is BreakerState.CLOSED  # type: ignore[comparison-overlap]
    await upstream.close()


async def test_bulkhead_rejects_beyond_its_cap_at_once(
    upstream_server: tuple[str, Script],
) -> None:
    address, script = upstream_server
    script.hold = asyncio.Event()
    upstream, stub = make(address, max_concurrent=3)
    held = [asyncio.ensure_future(stub.Check(Request())) for _ in range(3)]
    while script.attempts < 3:
        await script.arrived.wait()
        script.arrived.clear()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(Request())
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.info is not None and error.info.reason == "BULKHEAD_FULL"
    script.hold.set()
    await asyncio.gather(*held)
    assert upstream.bulkhead.in_use == 0
    await upstream.close()


async def test_handler_budget_propagates_to_its_outbound_call(
    upstream_server: tuple[str, Script],
) -> None:
    """A caller gives the middle service 500 ms; the middle calls the upstream (sleeping 2 s)
    with no timeout of its own. The caller gets DEADLINE_EXCEEDED in time and the upstream sees
    its handler cancelled."""
    address, script = upstream_server
    script.sleep = 2.0
    upstream, downstream_stub = make(address)

    class Middle(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
        async def Check(self, request: Request, context: Any) -> Response:
            response: Response = await downstream_stub.Check(request)
            return response

    app = GrpcApp(
        "middle",
        ServiceSettings(reflection=False),
        domain="middle.emporium.dev",
        translators=[upstream_errors],
    )
    app.add_servicer(health_pb2_grpc.add_HealthServicer_to_server, Middle())
    async with serving(app) as channel:
        middle = health_pb2_grpc.HealthStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await middle.Check(Request(service="x"), timeout=0.5)
        elapsed = time.monotonic() - started
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 1.0  # at the deadline (plus a busy machine's lag), not at the upstream's
        await asyncio.wait_for(script.cancelled.wait(), 2)
    await upstream.close()


async def test_established_stream_closes_a_half_open_breaker_while_still_open(
    upstream_server: tuple[str, Script],
) -> None:
    address, script = upstream_server
    clock = FakeClock()
    upstream, stub = make(
        address,
        clock=clock,
        max_attempts=1,
        breaker=BreakerPolicy(consecutive_failures=2, cooldown=5),
    )
    script.fail_next = 2
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Check(Request())
    assert upstream.breaker.state is BreakerState.OPEN
    clock.now += 5
    script.hold_after_first = asyncio.Event()
    stream = stub.Watch(Request())
    first = await stream.__anext__()  # the probe stream is up and stays open
    assert first.status == Response.SERVING
    assert upstream.breaker.state is BreakerState.CLOSED  # type: ignore[comparison-overlap]
    assert (await stub.Check(Request())).status == Response.SERVING  # others pass again
    script.hold_after_first.set()
    assert [r.status async for r in stream] == [Response.SERVING]
    await upstream.close()
