"""ListProducts queries: an AIP-160 filter subset and AIP-132 order_by, parsed into data.

filter:   term (AND term)*
term:     labels.<key> = "<value>"  |  price <op> <number>      op: = != < <= > >=
order_by: field [desc] (, field [desc])*   field: title, sku, price, create_time, update_time
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from libs.money import NANOS_PER_UNIT
from libs.runtime.errors import invalid_field
from services.catalog.domain.reasons import Reason

ORDERABLE = ("title", "sku", "price", "create_time", "update_time")
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")

_LABEL_TERM = re.compile(r'^labels\.([a-z][a-z0-9_-]{0,62})\s*=\s*"((?:[^"\\]|\\.)*)"$')
_PRICE_TERM = re.compile(r"^price\s*(!=|<=|>=|=|<|>)\s*(-?\d+(?:\.\d{1,9})?)$")
_AND = re.compile(r"\s+AND\s+")


@dataclass(frozen=True)
class PriceCondition:
    op: str
    total_nanos: int


@dataclass(frozen=True)
class ProductQuery:
    labels: dict[str, str] = field(default_factory=dict)
    price: tuple[PriceCondition, ...] = ()
    order: tuple[tuple[str, bool], ...] = ()  # (field, descending)


def parse_query(filter_text: str, order_by: str) -> ProductQuery:
    labels: dict[str, str] = {}
    price: list[PriceCondition] = []
    text = filter_text.strip()
    for term in _AND.split(text) if text else []:
        term = term.strip()
        if match := _LABEL_TERM.match(term):
            labels[match.group(1)] = match.group(2).replace('\\"', '"').replace("\\\\", "\\")
        elif match := _PRICE_TERM.match(term):
            try:
                amount = Decimal(match.group(2))
            except InvalidOperation:  # pragma: no cover - the regex admits only decimals
                raise invalid_field("filter", f"bad number in {term!r}") from None
            price.append(PriceCondition(match.group(1), int(amount * NANOS_PER_UNIT)))
        else:
            raise invalid_field(
                "filter",
                f'cannot parse {term!r}: use labels.<key> = "value" or price <op> <number>, '
                "joined by AND",
                Reason.INVALID_FILTER,
            )
    return ProductQuery(labels=labels, price=tuple(price), order=_parse_order(order_by))


def _parse_order(order_by: str) -> tuple[tuple[str, bool], ...]:
    order: list[tuple[str, bool]] = []
    for part in filter(None, (p.strip() for p in order_by.split(","))):
        words = part.split()
        if (
            len(words) > 2
            or words[0] not in ORDERABLE
            or (len(words) == 2 and words[1] not in ("asc", "desc"))
        ):
            raise invalid_field(
                "order_by",
                f"cannot order by {part!r}: use fields of {', '.join(ORDERABLE)}, "
                "each optionally followed by desc",
                Reason.INVALID_ORDER_BY,
            )
        order.append((words[0], len(words) == 2 and words[1] == "desc"))
    return tuple(order)
