"""The balance rules, over what the services and the provider report (no I/O here).

Money, per order: captured minus refunded at the provider is the total of a CONFIRMED order and 0
for a CANCELLED one; no authorization is still held for a CANCELLED order; no money moved
under a key that belongs to no order. Stock: a CONFIRMED order's reservation is committed with
the order's lines; every committed reservation belongs to a CONFIRMED order; no live
reservation belongs to no live order; each item's reserved units are its pending
reservations'.

What a running system has not finished yet (an order not terminal, a capture on its way) is
"in flight", not a violation, unless the audit is asked for a settled system.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from emporium.inventory.v1 import inventory_service_pb2 as inventory
from emporium.orders.v1 import orders_service_pb2 as orders
from libs.money import Money
from services.payments.domain.model import ProviderRecord, ProviderStatus

_LIVE = (orders.ORDER_STATE_PENDING_PAYMENT, orders.ORDER_STATE_AUTHORIZED)
_TERMINAL = (orders.ORDER_STATE_CONFIRMED, orders.ORDER_STATE_CANCELLED)


@dataclass
class Report:
    orders: Counter[str] = field(default_factory=Counter)
    captured: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # nanos/currency
    refunded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    violations: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def text(self) -> str:
        lines = [
            "orders: "
            + (", ".join(f"{n} {state}" for state, n in sorted(self.orders.items())) or "none"),
            "money at the provider: "
            + (
                ", ".join(
                    f"{_money(c, n)} captured, {_money(c, self.refunded.get(c, 0))} refunded"
                    for c, n in sorted(self.captured.items())
                )
                or "none"
            ),
        ]
        lines += [f"in flight: {item}" for item in self.in_flight]
        lines += [f"VIOLATION: {item}" for item in self.violations]
        verdict = "balanced" if self.ok else f"{len(self.violations)} violation(s)"
        lines.append(f"audit: {verdict} ({len(self.in_flight)} in flight)")
        return "\n".join(lines)


def check(
    all_orders: Sequence[orders.Order],
    reservations: Sequence[inventory.Reservation],
    levels: Sequence[inventory.StockLevel],
    records: Sequence[ProviderRecord],
    *,
    now: datetime,
    settled: bool,
) -> Report:
    report = Report()
    unfinished = report.violations if settled else report.in_flight
    by_key = {record.key: record for record in records}
    by_name = {order.name: order for order in all_orders}
    held = {r.name: r for r in reservations}
    for kept in records:
        if kept.captured is not None:
            report.captured[kept.amount.currency_code] += kept.captured.total_nanos
        if kept.refunded is not None:
            report.refunded[kept.amount.currency_code] += kept.refunded.total_nanos

    for order in all_orders:
        report.orders[orders.OrderState.Name(order.state).removeprefix("ORDER_STATE_")] += 1
        record = by_key.get(order.name.removeprefix("orders/"))
        if order.state not in _TERMINAL:
            unfinished.append(f"{order.name} is {_state(order)}")
        _check_money(order, record, report, unfinished)
        if order.state == orders.ORDER_STATE_CONFIRMED:
            _check_sold(order, held.get(order.reservation), report)

    for key, orphan in by_key.items():
        if f"orders/{key}" in by_name:
            continue
        net = _net(orphan)
        if net or orphan.status is ProviderStatus.AUTHORIZED:
            report.violations.append(
                f"provider key {key}: {orphan.status.value.lower()} with"
                f" {_money(orphan.amount.currency_code, net)} kept, and no such order"
            )

    owners = {order.reservation: order for order in all_orders}
    pending: dict[str, int] = defaultdict(int)
    for reservation in reservations:
        owner = owners.get(reservation.name)
        if reservation.state == inventory.RESERVATION_STATE_COMMITTED and (
            owner is None or owner.state != orders.ORDER_STATE_CONFIRMED
        ):
            report.violations.append(
                f"{reservation.name} is committed (stock sold) but its order is "
                + (f"{_state(owner)} ({owner.name})" if owner else "missing")
            )
        if reservation.state == inventory.RESERVATION_STATE_PENDING:
            for line in reservation.lines:
                pending[line.item] += line.quantity
            live = reservation.expire_time.ToDatetime(tzinfo=now.tzinfo) > now
            if live and (owner is None or owner.state not in _LIVE):
                whose = f"{owner.name} is {_state(owner)}" if owner else "no order holds it"
                unfinished.append(f"{reservation.name} holds stock but {whose}")
    if settled:
        for level in levels:
            if level.reserved != pending.get(level.name, 0):
                report.violations.append(
                    f"{level.name}: {level.reserved} reserved, but its pending reservations"
                    f" hold {pending.get(level.name, 0)}"
                )
    return report


def _check_money(
    order: orders.Order, record: ProviderRecord | None, report: Report, unfinished: list[str]
) -> None:
    currency = order.total.currency_code
    total = Money.from_message(order.total).total_nanos
    net = _net(record) if record else 0
    status = record.status if record else None
    if order.state == orders.ORDER_STATE_CONFIRMED:
        if status is ProviderStatus.AUTHORIZED:
            unfinished.append(f"{order.name} is confirmed; its capture is on the way")
        elif status is not ProviderStatus.CAPTURED or net != total:
            report.violations.append(
                f"{order.name} is confirmed for {_money(currency, total)} but the provider"
                f" has {_money(currency, net)} ({status.value.lower() if status else 'nothing'})"
            )
    elif order.state == orders.ORDER_STATE_CANCELLED:
        if net:
            report.violations.append(
                f"{order.name} is cancelled but {_money(currency, net)} was kept"
            )
        elif status is ProviderStatus.AUTHORIZED:
            unfinished.append(f"{order.name} is cancelled; its authorization is being voided")


def _check_sold(
    order: orders.Order, reservation: inventory.Reservation | None, report: Report
) -> None:
    wanted = {line.product.removeprefix("products/"): line.quantity for line in order.lines}
    if reservation is None or reservation.state != inventory.RESERVATION_STATE_COMMITTED:
        state = inventory.ReservationState.Name(reservation.state) if reservation else "missing"
        report.violations.append(
            f"{order.name} is confirmed but its reservation {order.reservation} is {state}"
        )
        return
    sold = {line.item.removeprefix("inventory/items/"): line.quantity for line in reservation.lines}
    if sold != wanted:
        report.violations.append(f"{order.name} is confirmed for {wanted} but {sold} was sold")


def _net(record: ProviderRecord) -> int:
    captured = record.captured.total_nanos if record.captured else 0
    refunded = record.refunded.total_nanos if record.refunded else 0
    return captured - refunded


def _state(order: orders.Order) -> str:
    return orders.OrderState.Name(order.state).removeprefix("ORDER_STATE_")


def _money(currency: str, nanos: int) -> str:
    return f"{Money.from_total_nanos(currency, nanos).decimal_text()} {currency}"
