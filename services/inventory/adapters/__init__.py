"""Inventory adapters: storage."""
