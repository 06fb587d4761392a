"""Inventory API: the gRPC servicer."""
