"""Orders settings: ORDERS_* environment variables (or ORDERS_CONFIG_FILE)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
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
    product_cache: bool = Field(
        default=True,
        description="keep the products read, current by catalog's change feed (WatchProducts);"
        " false: ask catalog for every order (a price change applies from its commit, not from"
        " when the feed brings it)",
    )
    reservation_ttl_seconds: float = Field(
        default=900.0, gt=0, le=86400, description="how long an order's stock is held"
    )
    payment_deadline_seconds: float = Field(
        default=600.0,
        gt=0,
        description="a PENDING_PAYMENT order older than this is cancelled; shorter than the"
        " reservation ttl",
    )
    stalled_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="an AUTHORIZED or CANCELLING order unchanged this long"
        " is taken up again by the sweeper",
    )
    sweep_every_seconds: float = Field(default=5.0, gt=0, description="the sweeper's period")

    @model_validator(mode="after")
    def _deadline_within_hold(self) -> OrdersSettings:
        if self.payment_deadline_seconds >= self.reservation_ttl_seconds:
            raise ValueError(
                f"ORDERS_PAYMENT_DEADLINE_SECONDS ({self.payment_deadline_seconds}) must be"
                f" shorter than ORDERS_RESERVATION_TTL_SECONDS ({self.reservation_ttl_seconds})"
            )
        return self
