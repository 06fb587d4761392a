"""What a cancellation notice tells the customer about their money."""

from __future__ import annotations

import pytest
from google.type import money_pb2

from emporium.orders.v1 import order_events_pb2 as events
from emporium.orders.v1 import orders_service_pb2 as orders
from services.notifications.domain.rendering import render


def cancelled(payment_state: orders.OrderPaymentState.ValueType) -> events.OrderCancelled:
    return events.OrderCancelled(
        order=orders.Order(
            name="orders/o9",
            customer="customers/ada",
            total=money_pb2.Money(currency_code="EUR", units=12, nanos=500_000_000),
            state=orders.ORDER_STATE_CANCELLED,
            cancel_reason="changed my mind",
            payment_state=payment_state,
        )
    )


@pytest.mark.parametrize(
    ("payment_state", "told"),
    [
        (orders.ORDER_PAYMENT_STATE_VOIDED, "The 12.50 EUR held on your card was released"),
        (orders.ORDER_PAYMENT_STATE_REFUNDED, "Your payment of 12.50 EUR was refunded."),
        (orders.ORDER_PAYMENT_STATE_DECLINED, "Your card was not charged."),
    ],
)
def test_a_cancellation_says_what_happened_to_the_money(
    payment_state: orders.OrderPaymentState.ValueType, told: str
) -> None:
    notice = render("k1", cancelled(payment_state), "customers.emporium.local")
    assert notice.subject == "Your order o9 was cancelled"
    assert "(changed my mind)" in notice.body
    assert told in notice.body


def test_a_cancellation_before_any_payment_news_promises_nothing() -> None:
    notice = render("k1", cancelled(orders.ORDER_PAYMENT_STATE_UNSPECIFIED), "example.org")
    assert "charged" not in notice.body and "refunded" not in notice.body
