"""A service's broker side, started and stopped with its GrpcApp: one publisher, the outbox
relay, and its consumers."""

from __future__ import annotations

from libs.messaging.broker import BrokerOptions
from libs.messaging.consumer import StreamConsumer, WorkConsumer
from libs.messaging.metrics import QueueDepths
from libs.messaging.outbox import OutboxRelay
from libs.messaging.publisher import Publisher
from libs.messaging.topology import Topology
from libs.server.grpc_app import GrpcApp
from libs.storage.database import Database


class ServiceMessaging:
    """With `database`, the service publishes through its outbox (publisher and relay);
    without, it only consumes."""

    def __init__(
        self,
        options: BrokerOptions,
        topology: Topology,
        database: Database | None,
        *,
        outbox_poll_seconds: float = 1.0,
        queue_depth_seconds: float = 10.0,
    ) -> None:
        self._outbox: tuple[Publisher, OutboxRelay] | None = None
        if database is not None:
            publisher = Publisher(options, topology)
            relay = OutboxRelay(database, publisher, poll_interval=outbox_poll_seconds)
            self._outbox = (publisher, relay)
        self.consumers: list[WorkConsumer | StreamConsumer] = []
        # The depth of the work queues this service owns, and of their DLQs, for metrics.
        self.queue_depths = QueueDepths(
            options,
            [n for q in topology.work_queues for n in (q.name, q.dead_letter_queue)],
            queue_depth_seconds,
        )

    def add(self, consumer: WorkConsumer | StreamConsumer) -> None:
        self.consumers.append(consumer)

    def outbox_written(self) -> None:
        """Call after committing outbox rows: the relay publishes them at once."""
        if self._outbox is not None:
            self._outbox[1].notify()

    def attach(self, app: GrpcApp) -> None:
        """Starts with the server; on shutdown stops consuming and lets in-flight messages
        finish within the grace period; closes the connections last."""
        grace = app.settings.grace_seconds

        async def start() -> None:
            if self._outbox is not None:
                publisher, relay = self._outbox
                await publisher.start()  # declares the topology before anyone consumes
                relay.start()
            for consumer in self.consumers:
                consumer.start()
            self.queue_depths.start()

        async def drain() -> None:
            for consumer in self.consumers:
                await consumer.stop(grace)

        async def close() -> None:
            await self.queue_depths.stop()
            if self._outbox is not None:
                publisher, relay = self._outbox
                await relay.stop()
                await publisher.close()

        app.on_start(start)
        app.on_shutdown(drain)
        app.on_stop(close)
