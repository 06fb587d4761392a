"""Catalog domain: entities, use cases and the repository interface. No transport, no SQL."""
