"""Business counters, derived in one place from the domain events the services publish.

The outbox relay calls `count_published` with the type of every message the broker confirmed,
so no service's domain code counts anything: a new event becomes a counter by one line in
`EVENT_COUNTERS`. A message republished after a crash between its confirm and its row being
marked sent is counted twice (the outbox's at-least-once); rates and funnels do not notice.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics

from libs.telemetry.metrics import LocalCounter

# Message type (the protobuf full name the outbox stores) -> (counter, description).
EVENT_COUNTERS: dict[str, tuple[str, str]] = {
    "emporium.orders.v1.OrderCreated": ("emporium.orders.placed", "orders placed"),
    "emporium.orders.v1.OrderConfirmed": ("emporium.orders.confirmed", "orders confirmed"),
    "emporium.orders.v1.OrderCancelled": ("emporium.orders.cancelled", "orders cancelled"),
    "emporium.payments.v1.PaymentAuthorized": (
        "emporium.payments.authorized",
        "payments authorized",
    ),
    "emporium.payments.v1.PaymentDeclined": ("emporium.payments.declined", "payments declined"),
    # The one-step charge (ChargePayment) captures at once: its success is a capture.
    "emporium.payments.v1.PaymentSucceeded": ("emporium.payments.captured", "payments captured"),
    "emporium.payments.v1.PaymentCaptured": ("emporium.payments.captured", "payments captured"),
    "emporium.payments.v1.PaymentFailed": ("emporium.payments.declined", "payments declined"),
    "emporium.payments.v1.PaymentVoided": ("emporium.payments.voided", "payments voided"),
    "emporium.payments.v1.PaymentRefunded": ("emporium.payments.refunded", "payments refunded"),
}

# Observed rather than added to: every counter is exported from the start, at 0, so a rule or
# a dashboard's rate() has a series before the first such event.
_meter = metrics.get_meter("emporium.business")
COUNTERS = {
    name: LocalCounter(_meter, name, description=description)
    for name, description in sorted(set(EVENT_COUNTERS.values()))
}
for _counter in COUNTERS.values():
    _counter.add(0)


def count_published(message_types: Iterable[str]) -> None:
    """Counts each confirmed message whose type is a business event; others are ignored."""
    for message_type in message_types:
        entry = EVENT_COUNTERS.get(message_type)
        if entry is not None:
            COUNTERS[entry[0]].add(1)
