"""What notifications sends."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Notification:
    key: str  # the event's message id: delivering the same key twice delivers once
    recipient: str
    subject: str
    body: str
