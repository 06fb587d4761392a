"""Rendering, a domain unit: what each order event tells the customer (no broker, no database)."""

from __future__ import annotations

import pytest

from libs.money import Money
from services.notifications.domain.model import MoneyOutcome, OrderEvent, OrderLine, OrderNews
from services.notifications.domain.rendering import render

PRICE = Money("EUR", 6, 250_000_000)


def event(news: OrderNews, money: MoneyOutcome | None = None) -> OrderEvent:
    return OrderEvent(
        news=news,
        order="orders/o9",
        customer="customers/ada",
        lines=(OrderLine("products/mug-01", "Mug", 2, PRICE),),
        total=PRICE.times(2),
        cancel_reason="changed my mind" if news is OrderNews.CANCELLED else "",
        money=money,
    )


@pytest.mark.parametrize(
    ("money", "told"),
    [
        (MoneyOutcome.VOIDED, "The 12.50 EUR held on your card was released"),
        (MoneyOutcome.REFUNDED, "Your payment of 12.50 EUR was refunded."),
        (MoneyOutcome.DECLINED, "Your card was not charged."),
    ],
)
def test_a_cancellation_says_what_happened_to_the_money(money: MoneyOutcome, told: str) -> None:
    notice = render("k1", event(OrderNews.CANCELLED, money), "customers.emporium.local")
    assert notice.subject == "Your order o9 was cancelled"
    assert "(changed my mind)" in notice.body
    assert told in notice.body


def test_a_cancellation_before_any_payment_news_promises_nothing() -> None:
    notice = render("k1", event(OrderNews.CANCELLED), "example.org")
    assert "charged" not in notice.body and "refunded" not in notice.body


def test_each_event_is_addressed_to_the_customer_with_its_lines_and_total() -> None:
    for news, subject in [
        (OrderNews.CREATED, "We received your order o9"),
        (OrderNews.CONFIRMED, "Your order o9 is confirmed"),
    ]:
        notice = render("k7", event(news), "example.org")
        assert (notice.key, notice.recipient, notice.subject) == ("k7", "ada@example.org", subject)
        assert "2 x Mug  6.25 EUR" in notice.body
        assert "Total: 12.50 EUR" in notice.body
