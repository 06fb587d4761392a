"""The one definition of what operators see: the Grafana dashboard's panels and the Prometheus
alerting rules, written once for every service.

`python -m tools.monitoring` renders it into mesh/components/monitoring/ (the dashboard JSON,
the rule file, ServiceMonitors) and tools/run's local Prometheus reads the same rules. Every
metric named here is a metric the services export (tests/e2e/test_metrics.py scrapes the fleet
for each); names are as Prometheus shows them (see libs/telemetry/metrics.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# The gRPC services (RED panels by method) and the HTTP front door (by route).
GRPC_SERVICES = ("identity", "catalog", "inventory", "orders", "payments", "notifications")
HTTP_SERVICES = ("gateway",)
SERVICES = GRPC_SERVICES + HTTP_SERVICES

# Server-side failures for availability (client errors such as NOT_FOUND are the caller's):
# UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
SERVER_ERROR_CODES = "2|4|12|13|14|15"
AVAILABILITY_SLO = 0.999
LATENCY_SLO = 0.99  # of RPCs faster than LATENCY_THRESHOLD_MS
LATENCY_THRESHOLD_MS = 250
HTTP_LATENCY_THRESHOLD_S = 0.25
OUTBOX_AGE_LIMIT_SECONDS = 60
STUCK_ORDERS = 5

RPC = "rpc_server_duration_milliseconds"
HTTP = "http_server_request_duration_seconds"


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]
    repeat_by_service: str = ""  # "grpc" or "http": one row per such service, same panels


def _grpc_panels() -> tuple[Panel, ...]:
    sel = 'service_name="$service"'
    return (
        Panel(
            "Rate by method",
            (
                (
                    f"sum by (rpc_method) (rate({RPC}_count{{{sel}}}[$__rate_interval]))",
                    "{{rpc_method}}",
                ),
            ),
            "reqps",
        ),
        Panel(
            "Errors by method and code",
            (
                (
                    f"sum by (rpc_method, rpc_grpc_status_code) "
                    f'(rate({RPC}_count{{{sel}, rpc_grpc_status_code!="0"}}[$__rate_interval]))',
                    "{{rpc_method}} {{rpc_grpc_status_code}}",
                ),
            ),
            "reqps",
        ),
        Panel(
            "Latency p50 / p99 by method",
            tuple(
                (
                    f"histogram_quantile({q}, sum by (rpc_method, le) "
                    f"(rate({RPC}_bucket{{{sel}}}[$__rate_interval])))",
                    f"p{int(q * 100)} {{{{rpc_method}}}}",
                )
                for q in (0.5, 0.99)
            ),
            "ms",
        ),
        Panel(
            "Upstream calls: latency p99, breaker, refusals",
            (
                (
                    "histogram_quantile(0.99, sum by (rpc_service, le) "
                    f"(rate(rpc_client_duration_milliseconds_bucket{{{sel}}}[$__rate_interval])))",
                    "p99 {{rpc_service}}",
                ),
                (
                    f"max by (upstream) (rpc_client_breaker_open{{{sel}}})",
                    "breaker open {{upstream}}",
                ),
                (
                    "sum by (upstream, reason) "
                    f"(rate(rpc_client_rejections_total{{{sel}}}[$__rate_interval]))",
                    "refused {{upstream}} {{reason}}",
                ),
                (
                    "sum by (upstream) "
                    f"(rate(rpc_client_retry_budget_exhausted_total{{{sel}}}[$__rate_interval]))",
                    "retry budget exhausted {{upstream}}",
                ),
            ),
        ),
        Panel(
            "Database pool",
            ((f"sum by (state) (db_client_connections_usage{{{sel}}})", "{{state}}"),),
        ),
    )


def _http_panels() -> tuple[Panel, ...]:
    sel = 'service_name="$service"'
    return (
        Panel(
            "Rate by route",
            (
                (
                    f"sum by (http_route) (rate({HTTP}_count{{{sel}}}[$__rate_interval]))",
                    "{{http_route}}",
                ),
            ),
            "reqps",
        ),
        Panel(
            "Errors (4xx, 5xx) by route and status",
            (
                (
                    "sum by (http_route, http_response_status_code) "
                    f'(rate({HTTP}_count{{{sel}, http_response_status_code=~"[45].."}}'
                    "[$__rate_interval]))",
                    "{{http_route}} {{http_response_status_code}}",
                ),
            ),
            "reqps",
        ),
        Panel(
            "Latency p50 / p99 by route",
            tuple(
                (
                    f"histogram_quantile({q}, sum by (http_route, le) "
                    f"(rate({HTTP}_bucket{{{sel}}}[$__rate_interval])))",
                    f"p{int(q * 100)} {{{{http_route}}}}",
                )
                for q in (0.5, 0.99)
            ),
            "s",
        ),
    )


def _messaging_panels() -> tuple[Panel, ...]:
    return (
        Panel(
            "Queue depth (work queues and DLQs)",
            (
                (
                    "max by (messaging_destination_name) (messaging_queue_depth)",
                    "{{messaging_destination_name}}",
                ),
            ),
        ),
        Panel(
            "Outbox backlog and oldest unsent row",
            (
                ("max by (service_name) (messaging_outbox_backlog)", "backlog {{service_name}}"),
                (
                    "max by (service_name) (messaging_outbox_oldest_unsent_age_seconds)",
                    "oldest (s) {{service_name}}",
                ),
            ),
        ),
        Panel(
            "Published and confirmed",
            (
                (
                    "sum by (messaging_rabbitmq_destination_routing_key) "
                    "(rate(messaging_client_sent_messages_total[$__rate_interval]))",
                    "sent {{messaging_rabbitmq_destination_routing_key}}",
                ),
                (
                    "sum by (messaging_rabbitmq_destination_routing_key) "
                    "(rate(messaging_client_confirmed_messages_total[$__rate_interval]))",
                    "confirmed {{messaging_rabbitmq_destination_routing_key}}",
                ),
            ),
            "mps",
        ),
        Panel(
            "Consumed, redelivered, dead-lettered",
            tuple(
                (
                    f"sum by (messaging_destination_name) "
                    f"(rate(messaging_client_{what}_messages_total[$__rate_interval]))",
                    f"{what} {{{{messaging_destination_name}}}}",
                )
                for what in ("consumed", "redelivered", "dead_lettered")
            ),
            "mps",
        ),
        Panel(
            "Handler time p99 and stream consumer lag",
            (
                (
                    "histogram_quantile(0.99, sum by (messaging_destination_name, le) "
                    "(rate(messaging_process_duration_seconds_bucket[$__rate_interval])))",
                    "p99 {{messaging_destination_name}}",
                ),
                (
                    "max by (messaging_consumer_group_name) (messaging_consumer_lag_seconds)",
                    "lag {{messaging_consumer_group_name}}",
                ),
            ),
            "s",
        ),
    )


def _funnel_panels() -> tuple[Panel, ...]:
    def increase(counter: str) -> str:
        return f"sum(increase({counter}[$__range]))"

    return (
        Panel(
            "Order funnel (this time range)",
            tuple(
                (increase(f"emporium_orders_{step}_total"), step)
                for step in ("placed", "confirmed", "cancelled")
            ),
            kind="bargauge",
        ),
        Panel(
            "Payments (this time range)",
            tuple(
                (increase(f"emporium_payments_{step}_total"), step)
                for step in ("authorized", "captured", "declined", "voided", "refunded")
            ),
            kind="bargauge",
        ),
        Panel(
            "Orders per minute",
            tuple(
                (f"sum(rate(emporium_orders_{step}_total[$__rate_interval])) * 60", step)
                for step in ("placed", "confirmed", "cancelled")
            ),
        ),
    )


def rows() -> tuple[Row, ...]:
    return (
        Row("Order funnel", _funnel_panels()),
        Row("Messaging", _messaging_panels()),
        Row("$service", _grpc_panels(), repeat_by_service="grpc"),
        Row("$service", _http_panels(), repeat_by_service="http"),
    )


# -- the dashboard -----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    """Grafana dashboard JSON (schema 39): the shared rows, then one row per service with the
    same panels (RED by method for gRPC services, by route for the gateway)."""
    panels: list[dict[str, Any]] = []
    y = 0
    panel_id = 0

    def add_row(title: str, row_panels: tuple[Panel, ...], service: str | None) -> None:
        nonlocal y, panel_id
        panel_id += 1
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": title.replace("$service", service or ""),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        width = 24 // min(len(row_panels), 3)
        for index, panel in enumerate(row_panels):
            panel_id += 1
            x = (index % 3) * width
            if index and index % 3 == 0:
                y += 8
            targets = [
                {
                    "refId": chr(ord("A") + n),
                    "expr": expr.replace("$service", service or ""),
                    "legendFormat": legend,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                }
                for n, (expr, legend) in enumerate(panel.exprs)
            ]
            panels.append(
                {
                    "id": panel_id,
                    "type": panel.kind,
                    "title": panel.title,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "gridPos": {"h": 8, "w": width, "x": x, "y": y},
                    "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": targets,
                }
            )
        y += 8

    for row in rows():
        if not row.repeat_by_service:
            add_row(row.title, row.panels, None)
            continue
        names = GRPC_SERVICES if row.repeat_by_service == "grpc" else HTTP_SERVICES
        for service in names:
            add_row(row.title, row.panels, service)
    return {
        "uid": "emporium-overview",
        "title": "Emporium",
        "description": "Generated by python -m tools.monitoring (tools/monitoring/definition.py)",
        "tags": ["emporium"],
        "schemaVersion": 39,
        "editable": False,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Data source",
                }
            ]
        },
        "panels": panels,
    }


# -- the alerting rules ------------------------------------------------------------------------


@dataclass(frozen=True)
class BurnWindow:
    """A multiwindow burn-rate alert (the SRE workbook's): both windows over `factor` times
    the error budget's rate."""

    long: str
    short: str
    factor: float
    severity: str
    for_: str = "2m"


BURN_WINDOWS = (
    BurnWindow("1h", "5m", 14.4, "page"),
    BurnWindow("6h", "30m", 6.0, "ticket", "15m"),
)
RECORDING_WINDOWS = sorted({w for b in BURN_WINDOWS for w in (b.long, b.short)})


@dataclass
class RuleGroups:
    groups: list[dict[str, Any]] = field(default_factory=list)

    def group(self, name: str, rules: list[dict[str, Any]]) -> None:
        self.groups.append({"name": name, "rules": rules})


def rule_groups() -> list[dict[str, Any]]:
    """The Prometheus rule groups: recording rules for the SLO ratios, then the alerts."""
    out = RuleGroups()
    recording: list[dict[str, Any]] = []
    for window in RECORDING_WINDOWS:
        recording += [
            {
                "record": f"emporium:rpc_errors:ratio_rate{window}",
                "expr": (
                    f"sum by (service_name) (rate({RPC}_count"
                    f'{{rpc_grpc_status_code=~"{SERVER_ERROR_CODES}"}}[{window}]))'
                    f" / sum by (service_name) (rate({RPC}_count[{window}]))"
                ),
            },
            {
                "record": f"emporium:rpc_slow:ratio_rate{window}",
                "expr": (
                    f"1 - sum by (service_name) (rate({RPC}_bucket"
                    f'{{le="{LATENCY_THRESHOLD_MS}"}}[{window}]))'
                    f" / sum by (service_name) (rate({RPC}_count[{window}]))"
                ),
            },
            {
                "record": f"emporium:http_errors:ratio_rate{window}",
                "expr": (
                    f"sum by (service_name) (rate({HTTP}_count"
                    f'{{http_response_status_code=~"5.."}}[{window}]))'
                    f" / sum by (service_name) (rate({HTTP}_count[{window}]))"
                ),
            },
        ]
    out.group("emporium-slo-ratios", recording)

    alerts: list[dict[str, Any]] = []
    for burn in BURN_WINDOWS:
        for what, record, budget, summary in (
            ("Availability", "rpc_errors", 1 - AVAILABILITY_SLO, "server errors"),
            ("Latency", "rpc_slow", 1 - LATENCY_SLO, f"RPCs slower than {LATENCY_THRESHOLD_MS} ms"),
            ("HttpAvailability", "http_errors", 1 - AVAILABILITY_SLO, "HTTP 5xx responses"),
        ):
            threshold = round(burn.factor * budget, 6)
            alerts.append(
                {
                    "alert": f"{what}BudgetBurn{burn.long}",
                    "expr": (
                        f"emporium:{record}:ratio_rate{burn.long} > {threshold}"
                        f" and emporium:{record}:ratio_rate{burn.short} > {threshold}"
                    ),
                    "for": burn.for_,
                    "labels": {"severity": burn.severity},
                    "annotations": {
                        "summary": f"{{{{ $labels.service_name }}}}: {summary} burn the error "
                        f"budget {burn.factor}x too fast ({burn.long} and {burn.short} windows)",
                    },
                }
            )
    alerts += [
        {
            "alert": "DeadLetterQueueNotEmpty",
            "expr": "max by (messaging_destination_name) "
            '(messaging_queue_depth{messaging_destination_name=~".+\\\\.dlq"}) > 0',
            "for": "5m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "{{ $labels.messaging_destination_name }} holds {{ $value }} "
                "message(s): tools/broker peek, then requeue or drop them",
            },
        },
        {
            "alert": "OutboxStalled",
            "expr": "max by (service_name) (messaging_outbox_oldest_unsent_age_seconds) > "
            f"{OUTBOX_AGE_LIMIT_SECONDS}",
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "{{ $labels.service_name }}: an outbox row has waited "
                "{{ $value | humanizeDuration }} to be published (is RabbitMQ reachable?)",
            },
        },
        {
            "alert": "OrdersStuck",
            # Orders placed 15 to 75 minutes ago that neither confirmation nor cancellation has
            # caught up with since: a saga step is not moving.
            "expr": (
                "sum(increase(emporium_orders_placed_total[1h] offset 15m))"
                " - sum(increase(emporium_orders_confirmed_total[75m]))"
                f" - sum(increase(emporium_orders_cancelled_total[75m])) > {STUCK_ORDERS}"
            ),
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "about {{ $value }} orders placed over 15 minutes ago are neither "
                "confirmed nor cancelled",
            },
        },
        {
            "alert": "CircuitBreakerOpen",
            "expr": "max by (service_name, upstream) (rpc_client_breaker_open) > 0",
            "for": "5m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "{{ $labels.service_name }} has failed fast to "
                "{{ $labels.upstream }} for 5 minutes",
            },
        },
    ]
    out.group("emporium-alerts", alerts)
    return out.groups


# -- the metric names an expression uses -------------------------------------------------------

_PROMQL_WORDS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "rate",
        "irate",
        "increase",
        "histogram_quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "le",
        "time",
        "vector",
        "scalar",
        "abs",
        "clamp_min",
    ]
)


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (label matchers, grouping labels, durations,
    strings, numbers and functions removed). Recording rules' outputs (with a colon) too."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    text = re.sub(r"\b\d+(?:\.\d+)?[a-z]*\b", "", text)  # numbers and durations (15m)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return words - _PROMQL_WORDS


def exported_names_used() -> set[str]:
    """Every metric the dashboard and the rules read that a service must export (recording
    rules' own outputs excluded)."""
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for g in rule_groups() for r in g["rules"]]
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    return {name for expr in exprs for name in metric_names(expr)} - recorded
