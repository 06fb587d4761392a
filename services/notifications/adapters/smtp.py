"""The SMTP channel (NOTIFICATIONS_CHANNEL=smtp): hands each notification to a mail server."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

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
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = notification.recipient
        message["Subject"] = notification.subject
        # Lets a mail server or reader drop a duplicate after a crash-and-redeliver.
        message["Message-ID"] = f"<{notification.key}@emporium.local>"
        message.set_content(notification.body)
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as client:
            client.send_message(message)
