"""The handler of the order events notifications reads (from the stream the contract says it
reads: `proto/emporium/orders/v1/order_events.proto`)."""

from __future__ import annotations

import logging

from emporium.orders.v1 import order_events_pb2 as events
from libs.messaging.consumer import Delivery, PermanentFailure
from services.notifications.adapters.order_events_mapping import OrderEventMessage, order_event
from services.notifications.domain.ports import Channel
from services.notifications.domain.rendering import render

CONSUMER = "notifications"
log = logging.getLogger("emporium.notifications")
EVENT_TYPES: dict[str, type[OrderEventMessage]] = {
    message.DESCRIPTOR.full_name: message
    for message in (events.OrderCreated, events.OrderConfirmed, events.OrderCancelled)
}


class OrderEventNotifier:
    """Renders and delivers one notification per event. The stream consumer keeps the inbox:
    it calls this only for events it has not handled before, and records them with its offset
    after each batch, so a replay re-reads events and delivers none twice. (A crash between a
    delivery and its batch's commit delivers again: Maildir keeps one file per message id;
    an SMTP server gets the mail twice, with the same Message-ID.)"""

    def __init__(self, channel: Channel, recipient_domain: str) -> None:
        self._channel = channel
        self._recipient_domain = recipient_domain
        self.delivered = 0

    async def __call__(self, delivery: Delivery) -> None:
        event_type = EVENT_TYPES.get(delivery.message_type)
        if event_type is None:
            raise PermanentFailure(f"not an order event: {delivery.message_type!r}")
        event = delivery.body(event_type)
        notification = render(delivery.message_id, order_event(event), self._recipient_domain)
        await self._channel.deliver(notification)
        self.delivered += 1
        log.info(
            "notification delivered",
            extra={"key": notification.key, "subject": notification.subject},
        )
