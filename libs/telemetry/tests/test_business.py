"""Business counters are derived from the types of the events the outbox publishes."""

from __future__ import annotations

from libs.telemetry import business


def test_business_counters_count_their_event_types_only() -> None:
    before = {name: counter.value() for name, counter in business.COUNTERS.items()}
    business.count_published(
        [
            "emporium.orders.v1.OrderCreated",
            "emporium.orders.v1.OrderCreated",
            "emporium.payments.v1.PaymentRefunded",
            "emporium.payments.v1.ChargePayment",  # a command, not a business fact
        ]
    )
    moved = {name: business.COUNTERS[name].value() - before[name] for name in before}
    assert moved["emporium.orders.placed"] == 2
    assert moved["emporium.payments.refunded"] == 1
    assert sum(moved.values()) == 3
