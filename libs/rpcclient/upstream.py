"""Upstream: one logical service as seen by its callers, and the resilient stubs made from it.

Every call gets a deadline (the handler's remaining budget minus a margin, else a default), goes
through a bulkhead and a circuit breaker, carries the trace context and request id, and is
retried with full-jitter backoff when it is safe: a retryable code (UNAVAILABLE; RESOURCE_EXHAUSTED
only with pushback), an idempotent method (declared in the contract with `idempotency_level`, or
an AIP Get/List), time left before the deadline, and a retry left in the upstream's budget.
Server streams are retried only before their first message; client and bidi streams are never
retried (their requests cannot be replayed) but get the deadline, bulkhead and breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

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
from libs.resilience.clock import Clock, monotonic
from libs.runtime.deadline import remaining_budget
from libs.runtime.errors import DomainError, ErrorKind
from libs.runtime.overload import pushback_ms
from libs.runtime.rich_status import (
    STATUS_DETAILS_KEY,
    build_status,
    details_of,
    status_from_trailers,
)
from libs.telemetry.logging import request_id
from libs.telemetry.metrics import LocalCounter
from libs.telemetry.tracing import DurationByCode, rpc_attributes, spans_recorded

log = logging.getLogger("emporium.rpcclient")
meter = metrics.get_meter("emporium.rpc.client")
ATTEMPTS = LocalCounter(meter, "rpc.client.attempts", description="calls sent to an upstream")
RETRIES = meter.create_counter("rpc.client.retries", description="attempts that were retries")
REJECTIONS = meter.create_counter(
    "rpc.client.rejections", description="calls refused locally (breaker open, bulkhead full)"
)
BREAKER_STATE = meter.create_up_down_counter(
    "rpc.client.breaker.open", description="1 while an upstream's breaker is not closed"
)
BUDGET_EXHAUSTED = meter.create_counter(
    "rpc.client.retry_budget.exhausted",
    description="retries the upstream's retry budget refused",
)
CLIENT_DURATION = meter.create_histogram(
    "rpc.client.duration",
    unit="ms",
    description="calls made, retries included, by method and final status code",
)

DOMAIN = "rpcclient.emporium.dev"
# Failures of the upstream itself; client errors and cancellations are neutral for the breaker.
UPSTREAM_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DATA_LOSS,
    }
)
_IDEMPOTENT_LEVELS = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)


@dataclass(frozen=True)
class UpstreamPolicy:
    default_timeout: float = 5.0
    deadline_margin: float = 0.02
    max_attempts: int = 4
    backoff: Backoff = field(default_factory=Backoff)
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    max_concurrent: int = 200
    # Method names (as in the contract) to treat as idempotent beyond what the contract says.
    idempotent: frozenset[str] = frozenset()


@dataclass
class UpstreamStats:
    calls: int = 0
    attempts: int = 0
    retries: int = 0
    rejected_open: int = 0
    rejected_bulkhead: int = 0
    state_changes: list[tuple[str, str]] = field(default_factory=list)


def local_error(
    code: grpc.StatusCode, reason: str, message: str, **metadata: str
) -> grpc.aio.AioRpcError:
    """An error raised before any call left the process, shaped like one from the server."""
    status = build_status(code, message, reason=reason, domain=DOMAIN, metadata=metadata)
    trailers = grpc.aio.Metadata((STATUS_DETAILS_KEY, status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message, "")


T = TypeVar("T")


class Upstream:
    def __init__(
        self,
        name: str,
        channel: grpc.aio.Channel,
        policy: UpstreamPolicy | None = None,
        *,
        clock: Clock = monotonic,
    ) -> None:
        self.name = name
        self.channel = channel
        self.policy = policy or UpstreamPolicy()
        self.stats = UpstreamStats()
        self.breaker = CircuitBreaker(
            self.policy.breaker, clock=clock, on_change=self._state_changed
        )
        self.budget = RetryBudget(self.policy.budget)
        self.bulkhead = Bulkhead(self.policy.max_concurrent)
        self._attributes = {"upstream": name}
        self._stubs: dict[object, Any] = {}
        # Exported at 0 from the start, so alerts and dashboards have a series to rate().
        BREAKER_STATE.add(0, self._attributes)
        BUDGET_EXHAUSTED.add(0, self._attributes)
        for reason in ("BULKHEAD_FULL", "CIRCUIT_OPEN"):
            REJECTIONS.add(0, {"upstream": name, "reason": reason})
        # Resolved once (OTel's proxy tracer costs a few µs a call); services configure tracing
        # before they build their upstreams.
        self.tracer = trace.get_tracer("emporium.rpc.client")

    def stub(self, stub_class: Callable[[grpc.aio.Channel], T]) -> T:
        """A generated stub whose every method goes through this upstream's protections; made
        once per class (wrapping every method is work a caller asking per request would
        repeat)."""
        known: T | None = self._stubs.get(stub_class)
        if known is None:
            known = self._stubs[stub_class] = self._wrapped(stub_class)
        return known

    def _wrapped(self, stub_class: Callable[[grpc.aio.Channel], T]) -> T:
        stub = stub_class(self.channel)
        service = _service_descriptor(stub_class)
        for method in service.methods:
            raw = getattr(stub, method.name)
            idempotent = method.name in self.policy.idempotent or is_idempotent(method)
            duration = DurationByCode(
                CLIENT_DURATION, rpc_attributes(service.full_name, method.name)
            )
            wrapper: Any
            if method.client_streaming:
                wrapper = _StreamingRequestCall(self, method.full_name, raw, duration)
            elif method.server_streaming:
                wrapper = _ServerStreamCall(self, method.full_name, raw, idempotent, duration)
            else:
                wrapper = _UnaryCall(self, method.full_name, raw, idempotent, duration)
            setattr(stub, method.name, wrapper)
        return stub

    async def close(self) -> None:
        await self.channel.close(None)

    # -- shared by the call wrappers ------------------------------------------------------

    def client_span(
        self, name: str, attributes: dict[str, str]
    ) -> AbstractContextManager[trace.Span]:
        """A CLIENT span when spans are recorded (an exporter, or a sampled caller); else no
        span at all: the caller's context, and so its traceparent, goes out unchanged. Name
        and attributes as the RPC conventions (and opentelemetry-instrumentation-grpc) give
        them: `package.Service/Method`, rpc.system, rpc.service, rpc.method."""
        if spans_recorded(None) or trace.get_current_span().is_recording():
            return self.tracer.start_as_current_span(
                name, kind=SpanKind.CLIENT, attributes=attributes
            )
        return contextlib.nullcontext(trace.INVALID_SPAN)

    def deadline(self, timeout: float | None) -> float:
        """Absolute monotonic deadline for a call, never past the inbound handler's."""
        budget = timeout if timeout is not None else self.policy.default_timeout
        inbound = remaining_budget()
        if inbound is not None:
            budget = min(budget, inbound - self.policy.deadline_margin)
        return time.monotonic() + budget

    def begin_attempt(self, method: str, deadline: float) -> tuple[Permit, float]:
        """Admits one attempt (bulkhead, breaker) with the time it has left."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise local_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "DEADLINE_EXCEEDED",
                f"no time left to call {method}",
            )
        permit = self.admit(method)
        self.stats.attempts += 1
        ATTEMPTS.add(1, self._attributes)
        return permit, remaining

    def admit(self, method: str) -> Permit:
        """Bulkhead then breaker; raises the local error a refused call gets."""
        if not self.bulkhead.try_acquire():
            self.stats.rejected_bulkhead += 1
            REJECTIONS.add(1, {"upstream": self.name, "reason": "BULKHEAD_FULL"})
            raise local_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "BULKHEAD_FULL",
                f"{self.name}: {self.bulkhead.max_concurrent} calls in flight",
                upstream=self.name,
                method=method,
            )
        try:
            return self.breaker.acquire()
        except CircuitOpen as open_:
            self.bulkhead.release()
            self.stats.rejected_open += 1
            REJECTIONS.add(1, {"upstream": self.name, "reason": "CIRCUIT_OPEN"})
            raise local_error(
                grpc.StatusCode.UNAVAILABLE,
                "CIRCUIT_OPEN",
                f"{self.name}: circuit open",
                upstream=self.name,
                method=method,
                retry_after_ms=str(int(open_.retry_after * 1000)),
            ) from None

    def settle(self, permit: Permit, code: grpc.StatusCode | None) -> None:
        self.bulkhead.release()
        self.breaker.record(permit, _breaker_outcome(code))

    def established(self, permit: Permit) -> None:
        """A stream is up: that is its success for the breaker (a half-open probe closes it
        now, not when a long stream ends)."""
        self.breaker.record(permit, failed=False)

    def stream_ended(self, unsettled: Permit | None, code: grpc.StatusCode | None) -> None:
        """Frees the stream's bulkhead slot. A stream that never got established is settled
        like a call; one that was counts again only if it ends abnormally."""
        self.bulkhead.release()
        if unsettled is not None:
            self.breaker.record(unsettled, _breaker_outcome(code))
        elif _breaker_outcome(code) is True:
            self.breaker.record(Permit.CALL, failed=True)

    def retry_delay(
        self, error: grpc.aio.AioRpcError, idempotent: bool, attempt: int, deadline: float
    ) -> float | None:
        """Seconds to wait before retrying, or None when the call must not be retried."""
        if not idempotent or attempt >= self.policy.max_attempts:
            return None
        pushback = _pushback(error)
        code = error.code()
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and pushback is None:
            return None
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return None
        if pushback is not None and pushback < 0:
            return None
        delay = pushback if pushback is not None else self.policy.backoff.delay(attempt)
        if time.monotonic() + delay >= deadline:
            return None
        if not self.budget.try_spend():
            BUDGET_EXHAUSTED.add(1, self._attributes)
            return None
        self.stats.retries += 1
        RETRIES.add(1, {"upstream": self.name})
        return delay

    def metadata(self, extra: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata = list(extra or ()) + list(carrier.items())
        current = request_id.get()
        if current and not any(key == "x-request-id" for key, _ in metadata):
            metadata.append(("x-request-id", current))
        return metadata

    def _state_changed(self, before: BreakerState, after: BreakerState) -> None:
        self.stats.state_changes.append((before.value, after.value))
        if (before is BreakerState.CLOSED) != (after is BreakerState.CLOSED):
            BREAKER_STATE.add(1 if before is BreakerState.CLOSED else -1, {"upstream": self.name})
        log.warning(
            "circuit breaker changed",
            extra={"upstream": self.name, "from": before.value, "to": after.value},
        )
        trace.get_current_span().add_event(
            "circuit_breaker_state",
            {"upstream": self.name, "from": before.value, "to": after.value},
        )


class _UnaryCall:
    def __init__(
        self, upstream: Upstream, method: str, raw: Any, idempotent: bool, duration: DurationByCode
    ) -> None:
        self._upstream, self._method, self._raw, self._idempotent = (
            upstream,
            method,
            raw,
            idempotent,
        )
        self._duration = duration
        self._span_name = (
            f"{duration.attributes['rpc.service']}/{duration.attributes['rpc.method']}"
        )

    async def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the generated stubs' signature
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        upstream = self._upstream
        started = time.perf_counter()
        deadline = upstream.deadline(timeout)
        upstream.stats.calls += 1
        upstream.budget.record_call()
        with (
            upstream.client_span(self._span_name, self._duration.attributes) as span,
            self._duration.recording(started),
        ):
            wire_metadata = upstream.metadata(metadata)
            attempt = 0
            while True:
                attempt += 1
                permit, remaining = upstream.begin_attempt(self._method, deadline)
                code: grpc.StatusCode | None = None
                try:
                    response = await self._raw(request, timeout=remaining, metadata=wire_metadata)
                    code = grpc.StatusCode.OK
                    span.set_attribute("rpc.grpc.status_code", 0)
                    return response
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                    delay = upstream.retry_delay(error, self._idempotent, attempt, deadline)
                    if delay is None:
                        span.set_attribute("rpc.grpc.status_code", code.value[0])
                        span.set_status(Status(StatusCode.ERROR, code.name))
                        raise
                    span.add_event("retry", {"attempt": attempt, "code": code.name})
                finally:
                    upstream.settle(permit, code)
                await asyncio.sleep(delay)


class _ServerStreamCall:
    def __init__(
        self, upstream: Upstream, method: str, raw: Any, idempotent: bool, duration: DurationByCode
    ) -> None:
        self._upstream, self._method, self._raw, self._idempotent = (
            upstream,
            method,
            raw,
            idempotent,
        )
        self._duration = duration

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> AsyncIterator[Any]:
        return self._stream(request, timeout, metadata)

    async def _stream(
        self,
        request: Any,
        timeout: float | None,  # noqa: ASYNC109 - the generated stubs' signature
        metadata: Sequence[tuple[str, str]] | None,
    ) -> AsyncIterator[Any]:
        with self._duration.recording(time.perf_counter()):
            async for message in self._attempts(request, timeout, metadata):
                yield message

    async def _attempts(
        self,
        request: Any,
        timeout: float | None,  # noqa: ASYNC109 - the generated stubs' signature
        metadata: Sequence[tuple[str, str]] | None,
    ) -> AsyncIterator[Any]:
        upstream = self._upstream
        deadline = upstream.deadline(timeout)
        upstream.stats.calls += 1
        upstream.budget.record_call()
        wire_metadata = upstream.metadata(metadata)
        attempt = 0
        while True:
            attempt += 1
            permit, remaining = upstream.begin_attempt(self._method, deadline)
            call = self._raw(request, timeout=remaining, metadata=wire_metadata)
            received = 0
            unsettled: Permit | None = permit
            code: grpc.StatusCode | None = None
            try:
                async for message in call:
                    if unsettled is not None:
                        upstream.established(unsettled)
                        unsettled = None
                    received += 1
                    yield message
                code = grpc.StatusCode.OK
                return
            except grpc.aio.AioRpcError as error:
                code = error.code()
                delay = (
                    upstream.retry_delay(error, self._idempotent, attempt, deadline)
                    if received == 0
                    else None
                )
                if delay is None:
                    raise
            finally:
                call.cancel()
                upstream.stream_ended(unsettled, code)
            await asyncio.sleep(delay)


class _StreamingRequestCall:
    """Client and bidi streams: deadline, bulkhead and breaker; the call object as gRPC gives it."""

    def __init__(self, upstream: Upstream, method: str, raw: Any, duration: DurationByCode) -> None:
        self._upstream, self._method, self._raw = upstream, method, raw
        self._duration = duration

    def __call__(
        self,
        request_iterator: Any = None,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        upstream = self._upstream
        started = time.perf_counter()
        remaining = upstream.deadline(timeout) - time.monotonic()
        upstream.stats.calls += 1
        try:
            permit = upstream.admit(self._method)
        except grpc.aio.AioRpcError as refused:
            self._duration.record(started, refused.code())
            raise
        upstream.stats.attempts += 1
        call = self._raw(
            request_iterator, timeout=max(remaining, 0.0), metadata=upstream.metadata(metadata)
        )
        settled = asyncio.ensure_future(
            _settle_when_done(upstream, permit, call, self._duration, started)
        )
        _background.add(settled)
        settled.add_done_callback(_background.discard)
        return call


_background: set[asyncio.Future[None]] = set()


async def _settle_when_done(
    upstream: Upstream, permit: Permit, call: Any, duration: DurationByCode, started: float
) -> None:
    unsettled: Permit | None = permit
    code: grpc.StatusCode | None = None
    try:
        await call.initial_metadata()
        if not call.done():  # headers and still open: the stream is up
            upstream.established(permit)
            unsettled = None
        code = await call.code()
    except asyncio.CancelledError:
        code = None
    finally:
        upstream.stream_ended(unsettled, code)
        duration.record(started, code or grpc.StatusCode.CANCELLED)


def upstream_errors(error: Exception) -> DomainError | None:
    """ExceptionTranslator for servers: an upstream's failure keeps its code and reason instead of
    becoming INTERNAL (a circuit open upstream is UNAVAILABLE CIRCUIT_OPEN to our caller too)."""
    if not isinstance(error, grpc.aio.AioRpcError):
        return None
    status = status_from_trailers(error.trailing_metadata())
    info = details_of(status)[0] if status is not None else None
    code = error.code()
    kind = ErrorKind.__members__.get(code.name, ErrorKind.UNAVAILABLE)
    reason = info.reason if info is not None and info.reason else f"UPSTREAM_{code.name}"
    metadata = dict(info.metadata) if info is not None else {}
    # The upstream's own message: the caller sees the same words a direct call would.
    return DomainError(kind, reason, error.details() or code.name, metadata)


def _breaker_outcome(code: grpc.StatusCode | None) -> bool | None:
    if code is None or code is grpc.StatusCode.CANCELLED:
        return None
    if code is grpc.StatusCode.OK:
        return False
    return True if code in UPSTREAM_FAILURES else None


def _pushback(error: grpc.aio.AioRpcError) -> float | None:
    """Seconds the server asked us to wait; negative means do not retry; None if not given."""
    milliseconds = pushback_ms(error.trailing_metadata())
    return None if milliseconds is None else milliseconds / 1000


def _service_descriptor(stub_class: Callable[..., Any]) -> Any:
    module_name = getattr(stub_class, "__module__", "")
    messages = sys.modules[module_name.removesuffix("_grpc")]
    service_name = getattr(stub_class, "__name__", "").removesuffix("Stub")
    return messages.DESCRIPTOR.services_by_name[service_name]


def is_idempotent(method: MethodDescriptor) -> bool:
    """Safe to retry by the contract: an idempotency_level, or an AIP Get/List (the mesh's
    retries follow the same rule: tools/mesh)."""
    level = method.GetOptions().idempotency_level
    return level in _IDEMPOTENT_LEVELS or method.name.startswith(("Get", "List", "BatchGet"))
