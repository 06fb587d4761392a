"""Broker settings every messaging service shares (<SERVICE>_AMQP_URL, ...)."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from libs.messaging.broker import DEFAULT_AMQP_URL, BrokerOptions, split_urls
from libs.runtime.config import ServiceSettings


class MessagingSettings(ServiceSettings):
    amqp_url: str = Field(
        default_factory=lambda: os.environ.get("EMPORIUM_AMQP_URL", DEFAULT_AMQP_URL),
        description=(
            "amqp://user:password@host:port/vhost, or the nodes of a cluster separated by commas;"
            " fleet-wide default EMPORIUM_AMQP_URL"
        ),
    )
    amqp_replicas: int | None = Field(
        # A bad fleet-wide value is reported by pydantic, with the setting's name.
        default_factory=lambda: os.environ.get("EMPORIUM_AMQP_REPLICAS") or None,
        validate_default=True,
        ge=1,
        description=(
            "replicas of each quorum queue and stream declared (the cluster's size, e.g. 3);"
            " unset: the broker's default; fleet-wide default EMPORIUM_AMQP_REPLICAS"
        ),
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
        urls = split_urls(url)
        if not urls:
            raise ValueError("must name at least one amqp:// or amqps:// URL")
        for each in urls:
            if not each.startswith(("amqp://", "amqps://")):
                raise ValueError(f"{each!r} must start with amqp:// or amqps://")
        return url

    def broker(self) -> BrokerOptions:
        return BrokerOptions(
            self.amqp_url,
            heartbeat=self.amqp_heartbeat_seconds,
            reconnect_interval=self.amqp_reconnect_seconds,
            publish_timeout=self.publish_timeout_seconds,
            replicas=self.amqp_replicas,
        )
