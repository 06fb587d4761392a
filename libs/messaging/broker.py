"""Connections to RabbitMQ: one place for the addresses, heartbeat and reconnect settings.

A broker may be several nodes of one cluster: `url` then lists them, separated by commas.
Every connection (publisher or consumer) tries them in turn, starting after the node it last
used, so a client whose node went down reconnects to another one.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractConnection
from yarl import URL

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class BrokerUnreachable(ConnectionError):
    """No node refused or answered; the message names them (without passwords)."""


@dataclass(frozen=True)
class BrokerOptions:
    url: str = DEFAULT_AMQP_URL  # one URL, or several nodes of a cluster separated by commas
    heartbeat: int = 10
    reconnect_interval: float = 1.0
    connect_timeout: float = 5.0
    publish_timeout: float = 5.0
    # Replicas of each quorum queue and stream the kit declares (x-quorum-initial-group-size,
    # x-initial-cluster-size); None leaves it to the broker.
    replicas: int | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return split_urls(self.url)

    @property
    def safe_url(self) -> str:
        """The URLs with their passwords hidden, for messages and logs."""
        return ",".join(_safe(url) for url in self.urls)


def split_urls(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _safe(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***" if parsed.password else None))


async def connect(options: BrokerOptions) -> AbstractConnection:
    """A plain connection to the first node that answers; the caller decides what to do when
    it drops (consumers and the publisher connect again: see `connect_next`)."""
    connection, _ = await connect_next(options)
    return connection


async def connect_next(options: BrokerOptions, after: int = -1) -> tuple[AbstractConnection, int]:
    """A connection to the first node that answers, trying them in order from the one after
    index `after` (the caller's last node), and the index of the node it reached."""
    urls = options.urls
    if not urls:
        raise BrokerUnreachable("no RabbitMQ address given")
    failures: list[str] = []
    for step in range(1, len(urls) + 1):
        index = (after + step) % len(urls)
        try:
            connection = await aio_pika.connect(
                URL(urls[index]).update_query(heartbeat=options.heartbeat),
                timeout=options.connect_timeout,
            )
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as error:
            failures.append(f"{_safe(urls[index])}: {error or type(error).__name__}")
            continue
        return connection, index
    raise BrokerUnreachable(f"cannot reach RabbitMQ at {'; '.join(failures)}")
