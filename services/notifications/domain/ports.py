"""Where notifications go."""

from __future__ import annotations

from typing import Protocol

from services.notifications.domain.model import Notification


class Channel(Protocol):
    async def deliver(self, notification: Notification) -> None:
        """Delivers, or raises to be retried. A channel that can recognise a key it has
        delivered before skips it (Maildir can; SMTP cannot take a message back)."""
        ...
