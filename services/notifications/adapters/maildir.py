"""The default channel: each notification is a file in a local Maildir (any mail reader opens
it), named by its key, so delivering the same event twice leaves one message."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from services.notifications.adapters.email_message import email_message
from services.notifications.domain.model import Notification


class MaildirChannel:
    def __init__(self, directory: Path, sender: str) -> None:
        self._directory = directory
        self._sender = sender
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    async def deliver(self, notification: Notification) -> None:
        await asyncio.to_thread(self._write, notification)

    def _write(self, notification: Notification) -> None:
        name = f"{notification.key}.emporium"
        if (self._directory / "new" / name).exists() or any(
            (self._directory / "cur").glob(f"{name}:*")
        ):
            return  # delivered before (a redelivery or a replay)
        staged = self._directory / "tmp" / name
        staged.write_bytes(email_message(notification, self._sender).as_bytes())
        os.replace(staged, self._directory / "new" / name)  # Maildir: visible all at once

    def delivered(self) -> list[Path]:
        return sorted((self._directory / "new").iterdir())
