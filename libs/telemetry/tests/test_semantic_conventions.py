"""The runtime's spans are named and attributed as opentelemetry-instrumentation-grpc does it
(the RPC semantic conventions), server side and client side: the same call, once through the
project's middleware and client kit, once through the library's interceptors, gives the same
span kind, rpc.* attributes and name (but for the library's leading slash, see `described`)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from libs.rpcclient.upstream import Upstream
from libs.runtime.middleware import register
from libs.telemetry.tracing import ServerTelemetry, add_span_processor, configure_tracing

RPC_KEYS = ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code")


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    configure_tracing("semconv", record=True)
    add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def described(span: ReadableSpan) -> tuple[str, SpanKind, dict[str, object]]:
    attributes = dict(span.attributes or {})
    # The conventions name an RPC span `$package.$service/$method`; the library (0.66b2) puts
    # the wire path's leading slash in front. We follow the conventions.
    return span.name.removeprefix("/"), span.kind, {k: attributes.get(k) for k in RPC_KEYS}


async def one_check(ours: bool, spans: InMemorySpanExporter) -> list[ReadableSpan]:
    """A Check through our middleware and client kit, or through the library's interceptors."""
    spans.clear()
    server = grpc.aio.server(interceptors=None if ours else [aio_server_interceptor()])  # type: ignore[no-untyped-call]
    if ours:
        register(
            server, health_pb2_grpc.add_HealthServicer_to_server, Health(), [ServerTelemetry()]
        )
    else:
        health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        interceptors = None if ours else aio_client_interceptors()  # type: ignore[no-untyped-call]
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=interceptors
        ) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            if ours:
                stub = Upstream("health", channel).stub(health_pb2_grpc.HealthStub)
            await stub.Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
    return list(spans.get_finished_spans())


async def test_server_and_client_spans_match_the_library(spans: InMemorySpanExporter) -> None:
    ours = {span.kind: described(span) for span in await one_check(True, spans)}
    library = {span.kind: described(span) for span in await one_check(False, spans)}
    assert set(ours) == set(library) == {SpanKind.SERVER, SpanKind.CLIENT}
    assert ours[SpanKind.SERVER] == library[SpanKind.SERVER]
    assert ours[SpanKind.CLIENT] == library[SpanKind.CLIENT]
    name, _, attributes = ours[SpanKind.SERVER]
    assert name == "grpc.health.v1.Health/Check"
    assert attributes == {
        "rpc.system": "grpc",
        "rpc.service": "grpc.health.v1.Health",
        "rpc.method": "Check",
        "rpc.grpc.status_code": 0,
    }
