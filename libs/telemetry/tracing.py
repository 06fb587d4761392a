"""OpenTelemetry tracing: the tracer provider and server spans for all four RPC kinds.

The span middleware continues the caller's trace from W3C `traceparent` metadata and keeps the
span open for the whole stream, not just its start (the generic OTel gRPC instrumentation runs as
a per-call interceptor; wrapping once at registration is cheaper, see libs.runtime.middleware).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
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

REQUEST_ID_KEY = "x-request-id"
log = logging.getLogger("emporium.rpc")


def configure_tracing(
    service: str, exporter: str = "none", *, record: bool | None = None
) -> TracerProvider:
    """Installs the global tracer provider; `exporter` is `none` or `console`.

    Spans are recorded when something will read them (an exporter, or `record=True` for a
    test's processor), and otherwise only when the caller's trace is sampled. Unrecorded spans
    still carry trace ids into logs and `traceparent` headers; recording one costs about as much
    as a confirmed publish (bench/README.md), so nothing pays for spans nobody will see."""
    global _record_own_traces
    recorded = exporter != "none" if record is None else record
    _record_own_traces = recorded
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(ALWAYS_ON if recorded else ALWAYS_OFF),
    )
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


_record_own_traces = False


def spans_recorded(traceparent: str | None) -> bool:
    """Whether a span started under `traceparent` (a W3C header, or None for a new trace)
    would be recorded here. Hot paths skip span work when it would not, and pass the caller's
    trace context on unchanged instead."""
    return _record_own_traces or (traceparent is not None and traceparent.endswith("-01"))


def add_span_processor(processor: SpanProcessor) -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(processor)


class ServerTelemetry:
    """Middleware: a SERVER span per RPC and the request id in the logging context."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("emporium.rpc.server")

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": method.service,
            "rpc.method": method.name,
            "rpc.grpc.kind": method.kind,
        }
        span_name = f"{method.service}/{method.name}"

        def start(context: Context) -> tuple[trace.Span, object]:
            metadata = {key: value for key, value in context.invocation_metadata() or ()}
            request_id.set(str(metadata.get(REQUEST_ID_KEY) or uuid.uuid4()))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("rpc started", extra={"rpc": method.full_name})
            span = self._tracer.start_span(
                span_name,
                context=propagate.extract(metadata),
                kind=SpanKind.SERVER,
                attributes=attributes,
            )
            return span, trace.use_span(span, end_on_exit=False)

        async def around_unary(
            request: Any, context: Context, call_next: Callable[[], Awaitable[Any]]
        ) -> Any:
            span, activation = start(context)
            try:
                with activation:  # type: ignore[attr-defined]
                    return await call_next()
            finally:
                _end(span, context)

        async def around_stream(
            request: Any, context: Context, call_next: Callable[[], AsyncIterator[Any]]
        ) -> AsyncIterator[Any]:
            span, activation = start(context)
            sent = 0
            try:
                with activation:  # type: ignore[attr-defined]
                    async for response in call_next():
                        sent += 1
                        yield response
            finally:
                span.set_attribute("rpc.grpc.messages_sent", sent)
                _end(span, context)

        if method.response_streaming:
            return stream_response(around_stream, behavior)
        return unary_response(around_unary, behavior)


def _end(span: trace.Span, context: Context) -> None:
    # A handler that returned normally leaves the code unset: that is OK.
    code = context.code() or grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
