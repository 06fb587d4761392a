"""Catalog settings: CATALOG_* environment variables (or the TOML file in CATALOG_CONFIG_FILE)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from libs.runtime.config import ServiceSettings
from libs.storage.database import SUPPORTED_DRIVERS


class CatalogSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CATALOG_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/catalog.sqlite3",
        description="sqlite+aiosqlite:///<path> (embedded) or postgresql+asyncpg://...",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        description="PostgreSQL: the write and read transactions a process runs at once (each"
        " one connection); replicas x this must stay within the server's max_connections",
    )
    currency_code: str = Field(default="USD", pattern="^[A-Z]{3}$")
    seed_sample_products: bool = False
    feed_poll_interval_seconds: float = Field(default=1.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        if not url.startswith(tuple(driver + "://" for driver in SUPPORTED_DRIVERS)):
            raise ValueError(
                f"must start with one of {', '.join(d + '://' for d in SUPPORTED_DRIVERS)}"
            )
        return url
