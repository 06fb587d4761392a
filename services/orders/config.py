"""Orders settings: ORDERS_* environment variables (or ORDERS_CONFIG_FILE)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.messaging.config import MessagingSettings


class OrdersSettings(MessagingSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/orders.sqlite3",
        description="sqlite+aiosqlite:///<path> (embedded) or postgresql+asyncpg://...",
    )
    discovery: Literal["local", "kubernetes"] = "local"
    registry_file: Path = Field(
        default=Path("var/registry.json"), description="local discovery: the launcher's registry"
    )
    kubernetes_namespace: str = "emporium"
    upstream_timeout_seconds: float = Field(default=2.0, gt=0)
    upstream_breaker_cooldown_seconds: float = Field(default=5.0, gt=0)
    watch_poll_seconds: float = Field(default=1.0, gt=0)
