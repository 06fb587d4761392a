"""Catalog adapters: storage."""
