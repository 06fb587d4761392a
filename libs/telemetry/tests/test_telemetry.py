"""Server spans continue the caller's trace for unary and streaming RPCs, record the status, and
every log line written inside an RPC carries the trace, span and request ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest as Request
from grpc_health.v1.health_pb2 import HealthCheckResponse as Response
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.runtime.config import ServiceSettings
from libs.runtime.errors import DomainError, ErrorKind
from libs.server.grpc_app import GrpcApp
from libs.telemetry.logging import JsonFormatter
from libs.telemetry.tracing import add_span_processor, configure_tracing
from libs.testing.rpc import serving

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
log = logging.getLogger("emporium.test")


class Traced:
    async def Check(self, request: Request, context: Any) -> Response:
        log.info("inside check")
        if request.service == "fail":
            raise DomainError(ErrorKind.NOT_FOUND, "MISSING", "missing")
        return Response(status=Response.SERVING)

    async def Watch(self, request: Request, context: Any) -> AsyncIterator[Response]:
        for _ in range(3):
            yield Response(status=Response.SERVING)


def add_traced_to_server(servicer: Traced, server: Any) -> None:
    codec: dict[str, Any] = {
        "request_deserializer": Request.FromString,
        "response_serializer": Response.SerializeToString,
    }
    server.add_registered_method_handlers(
        "test.Traced",
        {
            "Check": grpc.unary_unary_rpc_method_handler(servicer.Check, **codec),
            "Watch": grpc.unary_stream_rpc_method_handler(servicer.Watch, **codec),
        },
    )


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    configure_tracing("test", record=True)
    # To the global provider, whichever test module of this process installed it first.
    add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    yield output
    root.removeHandler(handler)
    log.setLevel(old_level)


async def call_traced(method: str, request: Request) -> list[Response]:
    app = GrpcApp("test", ServiceSettings(reflection=False), domain="test.emporium.dev")
    app.add_servicer(add_traced_to_server, Traced())
    metadata = (("traceparent", TRACEPARENT), ("x-request-id", "req-42"))
    async with serving(app) as channel:
        if method == "Watch":
            watch = channel.unary_stream(
                "/test.Traced/Watch", Request.SerializeToString, Response.FromString
            )
            return [r async for r in watch(request, metadata=metadata)]
        check = channel.unary_unary(
            "/test.Traced/Check", Request.SerializeToString, Response.FromString
        )
        try:
            return [await check(request, metadata=metadata)]
        except grpc.aio.AioRpcError:
            return []


def only_span(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in spans.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


async def test_unary_span_continues_the_callers_trace(
    spans: InMemorySpanExporter, log_output: io.StringIO
) -> None:
    spans.clear()
    await call_traced("Check", Request())
    span = only_span(spans, "test.Traced/Check")
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_SPAN
    assert span.attributes is not None
    assert span.attributes["rpc.method"] == "Check"
    assert span.attributes["rpc.grpc.status_code"] == 0

    line = next(json.loads(x) for x in log_output.getvalue().splitlines() if "inside check" in x)
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == format(span.context.span_id, "016x")
    assert line["request_id"] == "req-42"


async def test_failed_call_marks_the_span(spans: InMemorySpanExporter) -> None:
    spans.clear()
    await call_traced("Check", Request(service="fail"))
    span = only_span(spans, "test.Traced/Check")
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert not span.status.is_ok


async def test_stream_span_covers_the_whole_stream(spans: InMemorySpanExporter) -> None:
    spans.clear()
    responses = await call_traced("Watch", Request())
    assert len(responses) == 3
    span = only_span(spans, "test.Traced/Watch")
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.messages_sent"] == 3
    assert span.attributes["rpc.grpc.kind"] == "server_streaming"
