"""LocalCounter: summed in memory, exported by OpenTelemetry like a Counter, by attributes."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from libs.telemetry.metrics import LocalCounter


def exported(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, object], ...], int]:
    data = reader.get_metrics_data()
    assert data is not None
    counts: dict[tuple[tuple[str, object], ...], int] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    counts[tuple(sorted((point.attributes or {}).items()))] = int(point.value)
    return counts


def test_counts_are_exported_cumulatively_by_attributes() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    sent = LocalCounter(meter, "messaging.client.sent.messages")
    orders, payments = {"destination": "orders"}, {"destination": "payments"}
    for _ in range(3):
        sent.add(1, orders)
    sent.add(2, payments)
    assert exported(reader, "messaging.client.sent.messages") == {
        (("destination", "orders"),): 3,
        (("destination", "payments"),): 2,
    }
    sent.add(1, orders)
    assert exported(reader, "messaging.client.sent.messages")[(("destination", "orders"),)] == 4
    assert sent.value(orders) == 4 and sent.value({"destination": "nowhere"}) == 0
