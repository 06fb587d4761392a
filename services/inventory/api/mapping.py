"""Inventory's domain objects as the contract's messages."""

from __future__ import annotations

from emporium.inventory.v1 import inventory_service_pb2 as pb
from libs.storage.timestamps import timestamp_message
from services.inventory.domain.model import Reservation, ReservationState, StockLevel

STATES = {
    ReservationState.PENDING: pb.RESERVATION_STATE_PENDING,
    ReservationState.COMMITTED: pb.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: pb.RESERVATION_STATE_RELEASED,
    ReservationState.EXPIRED: pb.RESERVATION_STATE_EXPIRED,
}


def level_message(level: StockLevel) -> pb.StockLevel:
    return pb.StockLevel(
        name=level.name,
        on_hand=level.on_hand,
        reserved=level.reserved,
        available=level.available,
        update_time=timestamp_message(level.update_time),
    )


def reservation_message(reservation: Reservation) -> pb.Reservation:
    return pb.Reservation(
        name=reservation.name,
        lines=[
            pb.ReservationLine(item=f"inventory/items/{line.item_id}", quantity=line.quantity)
            for line in reservation.lines
        ],
        state=STATES[reservation.state],
        expire_time=timestamp_message(reservation.expire_time),
        create_time=timestamp_message(reservation.create_time),
    )
