"""The balance rules on hand-made snapshots: a balanced shop, then each kind of imbalance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2
from google.type import money_pb2

from emporium.inventory.v1 import inventory_service_pb2 as inventory
from emporium.orders.v1 import orders_service_pb2 as orders
from libs.money import Money
from services.payments.domain.model import ProviderRecord, ProviderStatus
from tools.commands.audit.rules import check

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TEN = Money("USD", 10, 0)
ZERO = Money("USD", 0, 0)


def order(order_id: str, state: orders.OrderState.ValueType) -> orders.Order:
    return orders.Order(
        name=f"orders/{order_id}",
        customer="customers/ann",
        lines=[orders.OrderLine(product="products/mug", quantity=2)],
        total=money_pb2.Money(currency_code="USD", units=10),
        state=state,
        reservation=f"inventory/reservations/r-{order_id}",
    )


def reservation(
    order_id: str, state: inventory.ReservationState.ValueType, expires_in: float = 60
) -> inventory.Reservation:
    expire = timestamp_pb2.Timestamp()
    expire.FromDatetime(NOW + timedelta(seconds=expires_in))
    return inventory.Reservation(
        name=f"inventory/reservations/r-{order_id}",
        lines=[inventory.ReservationLine(item="inventory/items/mug", quantity=2)],
        state=state,
        expire_time=expire,
    )


def record(key: str, status: ProviderStatus, captured: Money = ZERO) -> ProviderRecord:
    refunded = captured if status is ProviderStatus.REFUNDED else ZERO
    return ProviderRecord(key, status, TEN, f"sim_{key}", "", captured, refunded)


def level(reserved: int) -> inventory.StockLevel:
    return inventory.StockLevel(name="inventory/items/mug", on_hand=10, reserved=reserved)


BALANCED = (
    [
        order("paid", orders.ORDER_STATE_CONFIRMED),
        order("voided", orders.ORDER_STATE_CANCELLED),
        order("refunded", orders.ORDER_STATE_CANCELLED),
        order("open", orders.ORDER_STATE_PENDING_PAYMENT),
    ],
    [
        reservation("paid", inventory.RESERVATION_STATE_COMMITTED),
        reservation("voided", inventory.RESERVATION_STATE_RELEASED),
        reservation("refunded", inventory.RESERVATION_STATE_RELEASED),
        reservation("open", inventory.RESERVATION_STATE_PENDING),
    ],
    [level(reserved=2)],
    [
        record("paid", ProviderStatus.CAPTURED, TEN),
        record("voided", ProviderStatus.VOIDED),
        record("refunded", ProviderStatus.REFUNDED, TEN),
    ],
)


def test_a_balanced_shop_passes_and_its_open_order_is_in_flight() -> None:
    live = check(*BALANCED, now=NOW, settled=False)
    assert live.ok, live.text()
    assert live.in_flight == ["orders/open is PENDING_PAYMENT"]
    assert live.orders == {"CONFIRMED": 1, "CANCELLED": 2, "PENDING_PAYMENT": 1}
    assert "audit: balanced (1 in flight)" in live.text()
    settled = check(*BALANCED, now=NOW, settled=True)
    assert settled.violations == ["orders/open is PENDING_PAYMENT"]


def test_money_kept_for_a_cancelled_order_or_missing_for_a_confirmed_one() -> None:
    all_orders, reservations, levels, _ = BALANCED
    records = [
        record("paid", ProviderStatus.AUTHORIZED),  # capture on its way
        record("voided", ProviderStatus.CAPTURED, TEN),  # kept!
        record("refunded", ProviderStatus.REFUNDED, TEN),
        record("ghost", ProviderStatus.CAPTURED, TEN),  # no such order
    ]
    report = check(all_orders, reservations, levels, records, now=NOW, settled=False)
    assert report.violations == [
        "orders/voided is cancelled but 10.00 USD was kept",
        "provider key ghost: captured with 10.00 USD kept, and no such order",
    ]
    assert "orders/paid is confirmed; its capture is on the way" in report.in_flight


def test_stock_sold_without_an_order_or_an_order_confirmed_without_its_stock() -> None:
    all_orders, _, _, records = BALANCED
    reservations = [
        reservation("paid", inventory.RESERVATION_STATE_EXPIRED),
        reservation("voided", inventory.RESERVATION_STATE_COMMITTED),
        reservation("refunded", inventory.RESERVATION_STATE_PENDING),
        reservation("open", inventory.RESERVATION_STATE_PENDING),
    ]
    report = check(all_orders, reservations, [level(reserved=2)], records, now=NOW, settled=True)
    assert report.violations == [
        "orders/paid is confirmed but its reservation inventory/reservations/r-paid is"
        " RESERVATION_STATE_EXPIRED",
        "orders/open is PENDING_PAYMENT",
        "inventory/reservations/r-voided is committed (stock sold) but its order is"
        " CANCELLED (orders/voided)",
        "inventory/reservations/r-refunded holds stock but orders/refunded is CANCELLED",
        "inventory/items/mug: 2 reserved, but its pending reservations hold 4",
    ]
