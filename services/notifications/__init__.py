"""Notifications: reads the orders event stream and tells customers what happened."""
