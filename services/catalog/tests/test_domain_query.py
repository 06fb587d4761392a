"""ListProducts query parsing and page tokens."""

from __future__ import annotations

import pytest

from libs.runtime.errors import DomainError
from libs.runtime.pagination import MAX_PAGE_SIZE, page_request
from services.catalog.domain.query import PriceCondition, parse_query


def test_filter_terms_and_order() -> None:
    query = parse_query(
        'labels.color = "red" AND price >= 10.5 AND price < 100', "price desc, title"
    )
    assert query.labels == {"color": "red"}
    assert query.price == (PriceCondition(">=", 10_500_000_000), PriceCondition("<", 100 * 10**9))
    assert query.order == (("price", True), ("title", False))


@pytest.mark.parametrize(
    ("text", "order_by", "field"),
    [
        ("colour ~ red", "", "filter"),
        ("labels.color = red", "", "filter"),
        ("price >= ten", "", "filter"),
        ("", "weight", "order_by"),
        ("", "price sideways", "order_by"),
    ],
)
def test_bad_queries_name_the_field(text: str, order_by: str, field: str) -> None:
    with pytest.raises(DomainError) as caught:
        parse_query(text, order_by)
    assert [v.field for v in caught.value.violations] == [field]


def test_page_tokens_round_trip_and_are_bound_to_the_query() -> None:
    first = page_request(2, "", "filter-a", "order-a")
    token = first.next_token(returned=2, total=5)
    second = page_request(2, token, "filter-a", "order-a")
    assert second.offset == 2
    assert second.next_token(returned=2, total=5) != ""
    assert page_request(2, "", "f", "o").next_token(returned=2, total=2) == ""
    with pytest.raises(DomainError) as caught:
        page_request(2, token, "filter-b", "order-a")
    assert caught.value.reason == "PAGE_TOKEN_QUERY_MISMATCH"


def test_page_size_defaults_and_caps() -> None:
    assert page_request(0, "").limit == 50
    assert page_request(10**6, "").limit == MAX_PAGE_SIZE
    with pytest.raises(DomainError):
        page_request(-1, "")
