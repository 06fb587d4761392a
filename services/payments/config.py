"""Payments settings: PAYMENTS_* environment variables (or PAYMENTS_CONFIG_FILE)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    max_deliveries: int | None = Field(
        default=None, ge=1, description="attempts before the DLQ; unset: the contract's (5)"
    )
    retry_delays_seconds: tuple[float, ...] | None = Field(
        default=None,
        min_length=1,
        description="backoff between attempts; unset: the contract's (1, 5, 30)",
    )
    # The built-in provider is a simulator; its ledger stands in for the provider's books.
    provider_ledger: Path = Field(default=Path("var/payment-provider.sqlite3"))
    provider_latency_seconds: float = Field(default=0.05, ge=0)
    provider_latency_jitter_seconds: float = Field(
        default=0.0, ge=0, description="a random extra latency, up to this, per provider call"
    )
    provider_decline_rate: float = Field(default=0.0, ge=0, le=1)
    provider_transient_failure_rate: float = Field(default=0.0, ge=0, le=1)
    reconcile_after_seconds: float = Field(
        default=120.0,
        gt=0,
        description="a payment PENDING this long is settled from the provider's record of its"
        " key (declined if the provider never saw it); longer than a command's retries",
    )
    reconcile_every_seconds: float = Field(default=10.0, gt=0, description="reconciler period")
    check_orders: bool = Field(
        default=True,
        description="ask orders (GetOrder) whether an order exists, for this amount, before"
        " authorizing it; off only to run the worker without orders",
    )
    discovery: Literal["local", "kubernetes"] = "local"
    registry_file: Path = Field(
        default=Path("var/registry.json"), description="local discovery: the launcher's registry"
    )
    kubernetes_namespace: str = "emporium"
    upstream_timeout_seconds: float = Field(default=2.0, gt=0)
