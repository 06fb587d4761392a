"""Payments: the charge worker, the payment provider port, and PaymentsService."""
