"""Inventory domain: stock, reservations, the use cases. No transport, no SQL."""
