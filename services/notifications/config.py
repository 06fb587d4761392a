"""Notifications settings: NOTIFICATIONS_* environment variables (or NOTIFICATIONS_CONFIG_FILE)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.messaging.config import MessagingSettings


class NotificationsSettings(MessagingSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/notifications.sqlite3",
        description="where the stream offset and the inbox live",
    )
    start_from: Literal["first", "last", "next"] = Field(
        default="first", description="where a consumer with no stored offset begins"
    )
    channel: Literal["maildir", "smtp"] = "maildir"
    maildir: Path = Field(default=Path("var/mail"), description="channel=maildir: the Maildir")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_sender: str = "shop@emporium.local"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    recipient_domain: str = Field(
        default="customers.emporium.local",
        description="customers/{id} is written to {id}@<recipient_domain>",
    )
