"""The SMTP channel (NOTIFICATIONS_CHANNEL=smtp): hands each notification to a mail server."""

from __future__ import annotations

import asyncio
import smtplib

from services.notifications.adapters.email_message import email_message
from services.notifications.domain.model import Notification


class SmtpChannel:
    def __init__(self, host: str, port: int, sender: str, timeout: float) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._timeout = timeout

    async def deliver(self, notification: Notification) -> None:
        await asyncio.to_thread(self._send, notification)

    def _send(self, notification: Notification) -> None:
        message = email_message(notification, self._sender)
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as client:
            client.send_message(message)
