"""The queues and streams of the whole fleet, as the services declare them, and the message
types that travel on them (so the CLI can show bodies)."""

from __future__ import annotations

from emporium.orders.v1 import order_events_pb2
from emporium.payments.v1 import payment_messages_pb2
from libs.messaging.topology import Topology
from services.orders.adapters.payment_results import TOPOLOGY as ORDERS
from services.payments.adapters.charge_queue import topology as payments_topology
from services.payments.config import PaymentsSettings

_payments = PaymentsSettings()
FLEET = Topology(
    extra=(
        payments_topology(_payments.max_deliveries, _payments.retry_delays_seconds),
        ORDERS,
    )
)
# Imported for their descriptors: message bodies are looked up by full type name.
MESSAGE_MODULES = (order_events_pb2, payment_messages_pb2)
