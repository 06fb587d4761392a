"""The default channel: each notification is a file in a local Maildir (any mail reader opens
it), named by its key, so delivering the same event twice leaves one message."""

from __future__ import annotations

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
        # On the loop: a small file written to the page cache (tens of µs) costs less than the
        # hand-off to a worker thread and back.
        self._write(notification)

    def _write(self, notification: Notification) -> None:
        name = f"{notification.key}.emporium"
        new = os.path.join(self._directory, "new", name)
        if os.path.exists(new) or self._read(name):
            return  # delivered before (a redelivery or a replay)
        staged = os.path.join(self._directory, "tmp", name)
        with open(staged, "wb") as file:
            file.write(email_message(notification, self._sender).as_bytes())
        os.replace(staged, new)  # Maildir: visible all at once

    def _read(self, name: str) -> bool:
        """A mail reader has moved it to cur/ (as `<name>:2,<flags>`)."""
        prefix = f"{name}:"
        with os.scandir(os.path.join(self._directory, "cur")) as entries:
            return any(entry.name.startswith(prefix) for entry in entries)

    def delivered(self) -> list[Path]:
        return sorted((self._directory / "new").iterdir())
