"""Broker settings every messaging service shares (<SERVICE>_AMQP_URL, ...)."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from libs.messaging.broker import DEFAULT_AMQP_URL, BrokerOptions
from libs.runtime.config import ServiceSettings


class MessagingSettings(ServiceSettings):
    amqp_url: str = Field(
        default_factory=lambda: os.environ.get("EMPORIUM_AMQP_URL", DEFAULT_AMQP_URL),
        description="amqp://user:password@host:port/vhost; fleet-wide default EMPORIUM_AMQP_URL",
    )
    amqp_heartbeat_seconds: int = Field(default=10, ge=1, le=600)
    amqp_reconnect_seconds: float = Field(default=1.0, gt=0)
    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    prefetch: int = Field(default=32, ge=1, le=10_000)
    outbox_poll_seconds: float = Field(
        default=1.0, gt=0, description="how often the outbox relay looks for rows it missed"
    )

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, url: str) -> str:
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return url

    def broker(self) -> BrokerOptions:
        return BrokerOptions(
            self.amqp_url,
            heartbeat=self.amqp_heartbeat_seconds,
            reconnect_interval=self.amqp_reconnect_seconds,
            publish_timeout=self.publish_timeout_seconds,
        )
