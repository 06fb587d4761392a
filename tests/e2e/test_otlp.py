"""OTLP export (issue 15, acceptance 2): with OTEL_EXPORTER_OTLP_ENDPOINT set, the fleet sends
its spans and metrics to a collector. The collector here is a small gRPC server built on
opentelemetry-proto's generated TraceService and MetricsService; it receives every span of one
order's trace (gateway, orders, inventory, the charge through RabbitMQ to payments and the
result back to orders) and the services' metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc

from libs.messaging.contract import fleet_contract
from libs.runtime.processes import ServiceProcess
from libs.testing.front_door import password_token, staff_stocks
from tools.commands.run.fleet import running_processes

RESULTS_QUEUE = fleet_contract().topology("orders").work_queues[0]
CHARGE_QUEUE = fleet_contract().topology("payments").work_queues[0].name

TRACE_ID = uuid.uuid4().hex
PASSWORD = "correct horse battery"


def _service(resource: Any) -> str:
    return next((a.value.string_value for a in resource.attributes if a.key == "service.name"), "")


class Collector(trace_grpc.TraceServiceServicer, metrics_grpc.MetricsServiceServicer):
    """Keeps what it receives: (service, span name) per trace id, and metric names per
    service; a test awaits a condition on them."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[str, str]]] = {}
        self.metrics: dict[str, set[str]] = {}
        self._changed = asyncio.Condition()

    async def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_pb.ExportTraceServiceRequest):
            for resource_spans in request.resource_spans:
                service = _service(resource_spans.resource)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        entry = (service, span.name)
                        self.spans.setdefault(span.trace_id.hex(), []).append(entry)
            response: Any = trace_pb.ExportTraceServiceResponse()
        else:
            for resource_metrics in request.resource_metrics:
                service = _service(resource_metrics.resource)
                for scope in resource_metrics.scope_metrics:
                    self.metrics.setdefault(service, set()).update(m.name for m in scope.metrics)
            response = metrics_pb.ExportMetricsServiceResponse()
        async with self._changed:
            self._changed.notify_all()
        return response

    async def wait_until(self, holds: Callable[[], bool], within: float = 30.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(holds)


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    received = Collector()
    server = grpc.aio.server()
    # The generated registration functions carry no annotations.
    trace_grpc.add_TraceServiceServicer_to_server(received, server)  # type: ignore[no-untyped-call]
    metrics_grpc.add_MetricsServiceServicer_to_server(received, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield received, port
    await server.stop(None)


@pytest.fixture
async def fleet(
    tmp_path: Path,
    amqp_url: str,
    collector: tuple[Collector, int],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[dict[str, ServiceProcess]]:
    # The standard OpenTelemetry variables, as an operator would set them.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector[1]}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "500")
    async with running_processes(tmp_path, amqp_url) as running:
        yield running


async def test_one_orders_whole_trace_and_the_metrics_reach_the_collector(
    fleet: dict[str, ServiceProcess], collector: tuple[Collector, int], tmp_path: Path
) -> None:
    received = collector[0]
    async with httpx.AsyncClient(
        base_url=f"http://{fleet['gateway'].address}", timeout=30
    ) as client:
        await staff_stocks(client, tmp_path, "inventory/items/mug-01", 5)
        await client.post("/v1/users?user_id=ann", json={"password": PASSWORD})
        ann = await password_token(client, "ann", PASSWORD)
        created = await client.post(
            "/v1/orders",
            json={
                "customer": "customers/ann",
                "lines": [{"product": "products/mug-01", "quantity": 1}],
            },
            headers={
                "Authorization": f"Bearer {ann}",
                "Idempotency-Key": str(uuid.uuid4()),
                "traceparent": f"00-{TRACE_ID}-{uuid.uuid4().hex[:16]}-01",
            },
        )
        assert created.status_code == 200, created.text

    expected = {
        ("gateway", "POST /v1/orders"),
        ("orders", "emporium.orders.v1.OrdersService/CreateOrder"),
        ("inventory", "emporium.inventory.v1.InventoryService/ReserveStock"),
        ("payments", f"{CHARGE_QUEUE} process"),
        ("orders", f"{RESULTS_QUEUE.name} process"),
    }

    def whole_trace() -> bool:
        return expected <= set(received.spans.get(TRACE_ID, []))

    await received.wait_until(whole_trace)
    spans = set(received.spans[TRACE_ID])
    assert expected <= spans
    # The publishes between them belong to the same trace.
    assert ("orders", "amq.default publish") in spans

    def metrics_arrived() -> bool:
        return "rpc.server.duration" in received.metrics.get("orders", set()) and (
            "messaging.client.consumed.messages" in received.metrics.get("payments", set())
        )

    await received.wait_until(metrics_arrived)
    assert "http.server.request.duration" in received.metrics["gateway"]
    assert "emporium.orders.placed" in received.metrics["orders"]
