"""OpenTelemetry tracing: the tracer provider, and server spans and the `rpc.server.duration`
histogram for all four RPC kinds.

The span middleware continues the caller's trace from W3C `traceparent` metadata and keeps the
span open for the whole stream, not just its start (the generic OTel gRPC instrumentation runs as
a per-call interceptor; wrapping once at registration is cheaper, see libs.runtime.middleware).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.runtime.middleware import (
    Behavior,
    Context,
    MethodInfo,
    stream_response,
    unary_response,
)
from libs.telemetry.logging import request_id
from libs.telemetry.metrics import otlp_endpoint

REQUEST_ID_KEY = "x-request-id"
log = logging.getLogger("emporium.rpc")


def configure_tracing(
    service: str, exporter: str = "none", *, record: bool | None = None
) -> TracerProvider:
    """Installs the global tracer provider; `exporter` is `none` or `console`, and spans also
    go to the OTLP collector named by OTEL_EXPORTER_OTLP_ENDPOINT when it is set.

    Spans are recorded when something will read them (an exporter, or `record=True` for a
    test's processor), and otherwise only when the caller's trace is sampled. Unrecorded spans
    still carry trace ids into logs and `traceparent` headers; recording one costs about as much
    as a confirmed publish (bench/README.md), so nothing pays for spans nobody will see."""
    global _record_own_traces
    otlp = otlp_endpoint() is not None
    recorded = (exporter != "none" or otlp) if record is None else record
    _record_own_traces = recorded
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(ALWAYS_ON if recorded else ALWAYS_OFF),
    )
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    if otlp:
        # Imported only when used; the exporter reads the standard OTEL_EXPORTER_OTLP_* settings.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


_record_own_traces = False


def spans_recorded(traceparent: str | None) -> bool:
    """Whether a span started under `traceparent` (a W3C header, or None for a new trace)
    would be recorded here. Hot paths skip span work when it would not, and pass the caller's
    trace context on unchanged instead."""
    return _record_own_traces or (traceparent is not None and traceparent.endswith("-01"))


_ids = RandomIdGenerator()


def unsampled_child(parent: otel_context.Context | None) -> trace.SpanContext:
    """The span context a span nobody records would get under `parent` (the caller's trace id,
    or a new one), made without the SDK: logs and outbound calls still carry the trace."""
    caller = trace.get_current_span(parent).get_span_context()
    trace_id = caller.trace_id if caller.is_valid else _ids.generate_trace_id()
    return trace.SpanContext(trace_id, _ids.generate_span_id(), is_remote=False)


# The metadata keys that carry a caller's trace (W3C trace context and baggage).
_TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


def add_span_processor(processor: SpanProcessor) -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(processor)


SERVER_DURATION = metrics.get_meter("emporium.rpc.server").create_histogram(
    "rpc.server.duration", unit="ms", description="RPCs served, by method and status code"
)


def rpc_attributes(service: str, method: str) -> dict[str, str]:
    """The RPC conventions' attributes of a method, as spans and metrics carry them."""
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


class DurationByCode:
    """Records an RPC's duration with its method's attributes and status code; one attribute
    set per code, made once (the hot path builds no dictionaries)."""

    def __init__(self, histogram: metrics.Histogram, attributes: dict[str, str]) -> None:
        self._histogram = histogram
        self.attributes = attributes
        self._by_code: dict[int, dict[str, str | int]] = {}

    def record(self, started: float, code: grpc.StatusCode) -> None:
        number = code.value[0]
        attributes = self._by_code.get(number)
        if attributes is None:
            attributes = self._by_code[number] = {
                **self.attributes,
                "rpc.grpc.status_code": number,
            }
        self._histogram.record((time.perf_counter() - started) * 1000, attributes)

    @contextlib.contextmanager
    def recording(self, started: float) -> Iterator[None]:
        """Records the block's duration with the code it ended with: OK, an AioRpcError's
        code, CANCELLED (also for a stream its reader left), or UNKNOWN for anything else."""
        code = grpc.StatusCode.UNKNOWN
        try:
            yield
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise
        except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: a stream left early
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.record(started, code)


class ServerTelemetry:
    """Middleware: a SERVER span per RPC, its duration in `rpc.server.duration` (the RED
    metrics: rate and errors are the histogram's count by code), and the request id in the
    logging context."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("emporium.rpc.server")

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        attributes = {**rpc_attributes(method.service, method.name), "rpc.grpc.kind": method.kind}
        span_name = f"{method.service}/{method.name}"
        duration = DurationByCode(SERVER_DURATION, rpc_attributes(method.service, method.name))

        def start(context: Context) -> tuple[trace.Span, object]:
            # One pass over the metadata for the two things read from it; most calls carry no
            # trace and are not recorded, and then the SDK is skipped (bench/get_product.py).
            rid: str | bytes | None = None
            carrier: dict[str, str] | None = None
            for key, value in context.invocation_metadata() or ():
                if key == REQUEST_ID_KEY:
                    rid = value
                elif key in _TRACE_KEYS:
                    carrier = carrier or {}
                    carrier[key] = str(value)
            request_id.set(str(rid) if rid else str(uuid.uuid4()))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("rpc started", extra={"rpc": method.full_name})
            parent = propagate.extract(carrier) if carrier else None
            if spans_recorded(carrier.get("traceparent") if carrier else None):
                span = self._tracer.start_span(
                    span_name, context=parent, kind=SpanKind.SERVER, attributes=attributes
                )
            else:
                span = trace.NonRecordingSpan(unsampled_child(parent))
            return span, trace.use_span(span, end_on_exit=False)

        async def around_unary(
            request: Any, context: Context, call_next: Callable[[], Awaitable[Any]]
        ) -> Any:
            started = time.perf_counter()
            span, activation = start(context)
            try:
                with activation:  # type: ignore[attr-defined]
                    return await call_next()
            finally:
                duration.record(started, _end(span, context))

        async def around_stream(
            request: Any, context: Context, call_next: Callable[[], AsyncIterator[Any]]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            span, activation = start(context)
            sent = 0
            try:
                with activation:  # type: ignore[attr-defined]
                    async for response in call_next():
                        sent += 1
                        yield response
            finally:
                span.set_attribute("rpc.grpc.messages_sent", sent)
                duration.record(started, _end(span, context))

        if method.response_streaming:
            return stream_response(around_stream, behavior)
        return unary_response(around_unary, behavior)


def _end(span: trace.Span, context: Context) -> grpc.StatusCode:
    """Ends the span with the RPC's status code, and returns that code."""
    # A handler that returned normally leaves the code unset: that is OK.
    code = context.code() or grpc.StatusCode.OK
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    if not span.is_recording():
        return code
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
    return code
