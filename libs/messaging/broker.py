"""Connections to RabbitMQ: one place for the URL, heartbeat and reconnect settings."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from yarl import URL

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class BrokerUnreachable(ConnectionError):
    """The broker refused or did not answer; the message names it (without the password)."""


@dataclass(frozen=True)
class BrokerOptions:
    url: str = DEFAULT_AMQP_URL
    heartbeat: int = 10
    reconnect_interval: float = 1.0
    connect_timeout: float = 5.0
    publish_timeout: float = 5.0

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return str(URL(self.url).with_password("***" if URL(self.url).password else None))

    def _url(self) -> URL:
        return URL(self.url).update_query(heartbeat=self.heartbeat)


async def connect(options: BrokerOptions) -> AbstractConnection:
    """A plain connection: the caller decides what to do when it drops (consumers resume
    from where they were; see consumer.py)."""
    try:
        return await aio_pika.connect(options._url(), timeout=options.connect_timeout)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as error:
        raise BrokerUnreachable(f"cannot reach RabbitMQ at {options.safe_url}: {error}") from error


async def connect_robust(options: BrokerOptions) -> AbstractRobustConnection:
    """A connection that reconnects by itself and restores its channels (publishers)."""
    try:
        return await aio_pika.connect_robust(
            options._url(),
            timeout=options.connect_timeout,
            reconnect_interval=options.reconnect_interval,
        )
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as error:
        raise BrokerUnreachable(f"cannot reach RabbitMQ at {options.safe_url}: {error}") from error
