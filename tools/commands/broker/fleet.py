"""The queues and streams of the whole fleet, derived from the messaging contract (every
generated contract module is imported, so the CLI can also decode any body by its type)."""

from __future__ import annotations

from libs.messaging.contract import fleet_contract

FLEET = fleet_contract().fleet_topology()
