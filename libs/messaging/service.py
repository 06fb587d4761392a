"""A service's broker side, started and stopped with its GrpcApp: one publisher, the outbox
relay, and its consumers."""

from __future__ import annotations

from libs.messaging.broker import BrokerOptions
from libs.messaging.consumer import StreamConsumer, WorkConsumer
from libs.messaging.outbox import OutboxRelay
from libs.messaging.publisher import Publisher
from libs.messaging.topology import Topology
from libs.runtime.server import GrpcApp
from libs.storage.database import Database


class ServiceMessaging:
    def __init__(
        self,
        options: BrokerOptions,
        topology: Topology,
        database: Database,
        *,
        outbox_poll_seconds: float = 1.0,
    ) -> None:
        self.options = options
        self.topology = topology
        self.publisher = Publisher(options, topology)
        self.relay = OutboxRelay(database, self.publisher, poll_interval=outbox_poll_seconds)
        self.consumers: list[WorkConsumer | StreamConsumer] = []

    def add(self, consumer: WorkConsumer | StreamConsumer) -> None:
        self.consumers.append(consumer)

    def attach(self, app: GrpcApp) -> None:
        """Starts with the server; on shutdown stops consuming and lets in-flight messages
        finish within the grace period; closes the connections last."""
        grace = app.settings.grace_seconds

        async def start() -> None:
            await self.publisher.start()  # declares the topology before anyone consumes
            self.relay.start()
            for consumer in self.consumers:
                consumer.start()

        async def drain() -> None:
            for consumer in self.consumers:
                await consumer.stop(grace)

        async def close() -> None:
            await self.relay.stop()
            await self.publisher.close()

        app.on_start(start)
        app.on_shutdown(drain)
        app.on_stop(close)
