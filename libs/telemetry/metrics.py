"""Metrics: a process's MeterProvider, its Prometheus endpoint, OTLP export, and the merged
endpoint of a multi-process service.

Instruments are created where they are recorded (`metrics.get_meter(...)` at import); until
`configure_metrics` installs the provider, OpenTelemetry's proxy meter drops what they record.
Names follow the OpenTelemetry semantic conventions; Prometheus sees them translated by the
OpenTelemetry exporter (`rpc.server.duration` in ms is `rpc_server_duration_milliseconds`,
a counter gains `_total`), with a `service_name` label from the resource on every series.

Workers (`<SVC>_WORKERS=N`): each worker process has its own registry and serves it on a port
of its own on loopback; the supervising process serves `<SVC>_METRICS_PORT` and answers a scrape
by scraping its workers and merging their series with a `worker` label. One port per pod or
process group, as Prometheus expects, and every worker's counts in it.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger("emporium.telemetry")

# Durations measured in seconds (HTTP, message handling): buckets from 5 ms to 10 s. The RPC
# histograms are in milliseconds (the RPC conventions' unit) and keep the SDK's default buckets
# (0 to 10,000 ms).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SECONDS_HISTOGRAMS = ("http.server.request.duration", "messaging.process.duration")


class LocalCounter:
    """A monotonic counter summed in this process's memory and read by OpenTelemetry when it
    collects (an observable counter), for counts taken on every message or call: the SDK's
    `Counter.add` costs about 10 µs (attribute cleaning, hashing, a measurement object), this
    well under 1 µs, and an order's path adds a dozen. Exported the same way as a `Counter`.
    Add from the event loop's thread."""

    def __init__(self, meter: metrics.Meter, name: str, *, unit: str = "", description: str = ""):
        self._totals: dict[tuple[tuple[str, str], ...], int] = {}
        meter.create_observable_counter(name, [self._observe], unit=unit, description=description)

    def add(self, amount: int, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        self._totals[key] = self._totals.get(key, 0) + amount

    def value(self, attributes: Mapping[str, str] | None = None) -> int:
        return self._totals.get(tuple(attributes.items()) if attributes else (), 0)

    def _observe(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(total, dict(key)) for key, total in list(self._totals.items())]


def otlp_endpoint() -> str | None:
    """The OTLP collector named by the standard variables, if any (traces or metrics)."""
    return os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


@dataclass
class MetricsEndpoint:
    """Where this process's metrics are served (port 0 when not served)."""

    host: str
    port: int
    provider: MeterProvider

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics" if self.port else ""

    def shutdown(self) -> None:
        """Flushes OTLP metrics (a process that ends should not lose its last interval)."""
        self.provider.shutdown()


def configure_metrics(
    service: str, port: int | None, *, host: str = "127.0.0.1", resource: Resource | None = None
) -> MetricsEndpoint:
    """Installs the global MeterProvider: a Prometheus endpoint on `port` (0 picks a free one,
    None serves none) and OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set. Logs
    `metrics` with the port it serves."""
    readers: list[MetricReader] = []
    served = 0
    if port is not None:
        registry = CollectorRegistry(auto_describe=True)
        readers.append(
            PrometheusMetricReader(
                scope_info_enabled=False,
                resource_attribute_filter=lambda key: key == "service.name",
                registry=registry,
            )
        )
        server, _ = start_http_server(port, addr=host, registry=registry)
        served = int(server.server_port)
    if otlp_endpoint():
        # Imported only when used: the gRPC exporter pulls in its own channel machinery.
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        interval = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "10000"))
        readers.append(
            PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=interval)
        )
    provider = MeterProvider(
        metric_readers=readers,
        resource=resource or Resource.create({"service.name": service}),
        views=[
            View(
                instrument_name=name,
                aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
            )
            for name in SECONDS_HISTOGRAMS
        ],
    )
    metrics.set_meter_provider(provider)
    endpoint = MetricsEndpoint(host, served, provider)
    if served:
        log.info("metrics", extra={"port": served, "url": endpoint.url})
    return endpoint


class WorkerMetrics(Collector):
    """The supervisor's collector: scrapes each worker's endpoint and yields every family once,
    its samples labelled with the worker's index. A worker that does not answer is skipped
    (and `emporium_worker_up` says so)."""

    def __init__(self, worker_urls: Sequence[str], timeout: float = 2.0) -> None:
        self._urls = list(worker_urls)
        self._timeout = timeout

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        up = Metric("emporium_worker_up", "1 if the worker answered this scrape", "gauge")
        for index, url in enumerate(self._urls):
            worker = str(index)
            try:
                with urllib.request.urlopen(url, timeout=self._timeout) as response:
                    text = response.read().decode()
            except OSError as error:
                log.warning("worker metrics unavailable", extra={"url": url, "error": str(error)})
                up.add_sample("emporium_worker_up", {"worker": worker}, 0.0)
                continue
            up.add_sample("emporium_worker_up", {"worker": worker}, 1.0)
            for family in text_string_to_metric_families(text):
                target = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": worker}
                    target.add_sample(sample.name, labels, sample.value)
        yield up
        yield from merged.values()


def serve_worker_metrics(worker_ports: Sequence[int], port: int, host: str) -> int:
    """Serves the workers' merged metrics on `port` (0 picks one); returns the port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerMetrics([f"http://127.0.0.1:{p}/metrics" for p in worker_ports]))
    server, _ = start_http_server(port, addr=host, registry=registry)
    served = int(server.server_port)
    log.info(
        "metrics",
        extra={"port": served, "url": f"http://{host}:{served}/metrics", "workers": worker_ports},
    )
    return served
