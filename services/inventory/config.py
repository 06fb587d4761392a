"""Inventory settings: INVENTORY_* environment variables (or INVENTORY_CONFIG_FILE)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime.config import ServiceSettings


class InventorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/inventory.sqlite3",
        description="sqlite+aiosqlite:///<path> (embedded) or postgresql+asyncpg://...",
    )
    expiry_sweep_seconds: float = Field(default=5.0, gt=0, description="how often to expire")
    reservation_ttl_seconds: float = Field(
        default=900.0,
        gt=0,
        le=86400,
        description="how long a reservation holds stock when ReserveStock names no ttl",
    )
