"""Gateway settings: GATEWAY_* environment variables (or GATEWAY_CONFIG_FILE)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime.config import ServiceSettings


class GatewaySettings(ServiceSettings):
    """`port`, `host`, `security` (how it reaches the services) and the log settings are the
    runtime's; the rest is the HTTP front door's."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port; 0 picks a free one")
    discovery: Literal["local", "kubernetes"] = "local"
    registry_file: Path = Field(
        default=Path("var/registry.json"), description="local discovery: the launcher's registry"
    )
    kubernetes_namespace: str = "emporium"
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db: rate limits and idempotency keys shared by every "
        "replica; unset keeps them in-process",
    )
    redis_key_prefix: str = Field(default="emporium:", description="namespace of our Redis keys")
    issuer: str = Field(default="https://identity.emporium.local", description="tokens' iss")
    audience: str = Field(default="emporium", description="tokens' aud")
    clock_skew_seconds: float = Field(default=30.0, ge=0, le=300)
    request_timeout_seconds: float = Field(
        default=10.0, gt=0, description="budget of a request, upstream calls included"
    )
    stream_timeout_seconds: float = Field(default=3600.0, gt=0, description="SSE streams")
    upstream_breaker_cooldown_seconds: float = Field(default=5.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    rate_read_per_second: float = Field(default=50.0, gt=0)
    rate_read_burst: int = Field(default=100, ge=1)
    rate_write_per_second: float = Field(default=10.0, gt=0)
    rate_write_burst: int = Field(default=20, ge=1)
    idempotency_ttl_seconds: float = Field(default=86400.0, gt=0)
    cache_ttl_seconds: float = Field(
        default=5.0, ge=0, description="public GET responses; 0 turns the cache off"
    )
    access_log: bool = Field(default=True, description="one JSON line per request")
    trusted_proxies: int = Field(
        default=0, ge=0, description="X-Forwarded-For hops to trust for the client IP"
    )
