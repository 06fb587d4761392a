"""Payments settings: PAYMENTS_* environment variables (or PAYMENTS_CONFIG_FILE)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.messaging.config import MessagingSettings


class PaymentsSettings(MessagingSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENTS_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/payments.sqlite3",
        description="sqlite+aiosqlite:///<path> (embedded) or postgresql+asyncpg://...",
    )
    concurrency: int = Field(default=16, ge=1, le=1000, description="charges handled at once")
    max_deliveries: int = Field(default=5, ge=1, description="attempts before the DLQ")
    retry_delays_seconds: tuple[float, ...] = Field(
        default=(1.0, 5.0, 30.0), min_length=1, description="backoff between attempts"
    )
    # The built-in provider is a simulator; its ledger stands in for the provider's books.
    provider_ledger: Path = Field(default=Path("var/payment-provider.sqlite3"))
    provider_latency_seconds: float = Field(default=0.05, ge=0)
    provider_decline_rate: float = Field(default=0.0, ge=0, le=1)
    provider_transient_failure_rate: float = Field(default=0.0, ge=0, le=1)
