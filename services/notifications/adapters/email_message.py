"""A notification as an RFC 5322 message, for every channel (Maildir, SMTP).

Built with the `compat32` `Message`, which keeps headers as given: `EmailMessage`'s default
policy parses every header it is handed into objects, 1 ms a message (11x this), half of
notifications' CPU per order (bench/orders.py)."""

from __future__ import annotations

from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.utils import formatdate

from services.notifications.domain.model import Notification

_UTF8 = Charset("utf-8")
_UTF8.header_encoding = QP
_UTF8.body_encoding = QP  # readable in the file; encoded only where a character needs it


def email_message(notification: Notification, sender: str) -> Message:
    message = Message()
    message["From"] = sender
    message["To"] = notification.recipient
    subject = notification.subject
    message["Subject"] = subject if subject.isascii() else Header(subject, _UTF8).encode()
    message["Date"] = formatdate(localtime=False)
    # Lets a mail server or reader drop a duplicate after a crash-and-redeliver.
    message["Message-ID"] = f"<{notification.key}@emporium.local>"
    message["MIME-Version"] = "1.0"
    message.set_payload(notification.body, _UTF8)
    return message
