"""The default channel: each notification is a file in a local Maildir (any mail reader opens
it), named by its key, so delivering the same event twice leaves one message."""

from __future__ import annotations

import os
import time
from pathlib import Path

from services.notifications.adapters.email_message import email_message
from services.notifications.domain.model import Notification


class MaildirChannel:
    def __init__(self, directory: Path, sender: str) -> None:
        self._directory = directory
        self._sender = sender
        self._cur_names: set[str] = set()  # cur/'s listing, as of its mtime below
        self._cur_changed = -1
        self._cur_settled = False
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
        return name in self._read_names()

    def _read_names(self) -> set[str]:
        """The names in cur/ without their flags. Read again only when cur/ has changed since:
        a scan per delivery was O(mails read) each. A change within the same tick of the
        file system's clock as the last scan may leave the directory's mtime as it was, so a
        listing is trusted only once cur/ had been quiet for a second when it was taken."""
        cur = os.path.join(self._directory, "cur")
        changed = os.stat(cur).st_mtime_ns
        if changed != self._cur_changed or not self._cur_settled:
            scanned = time.time_ns()
            with os.scandir(cur) as entries:
                self._cur_names = {entry.name.partition(":")[0] for entry in entries}
            self._cur_changed = changed
            self._cur_settled = changed < scanned - 1_000_000_000
        return self._cur_names

    def delivered(self) -> list[Path]:
        return sorted((self._directory / "new").iterdir())
