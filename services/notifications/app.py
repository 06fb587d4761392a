"""Wiring: notifications is a stream consumer with a gRPC health endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from libs.messaging.consumer import StreamConsumer
from libs.messaging.contract import fleet_contract
from libs.messaging.schema import messaging_migration
from libs.messaging.service import ServiceMessaging
from libs.messaging.topology import Topology
from libs.security.identity_tokens import identity_tokens
from libs.server.grpc_app import GrpcApp
from libs.storage.database import Database
from services.notifications.adapters.maildir import MaildirChannel
from services.notifications.adapters.order_events import CONSUMER, OrderEventNotifier
from services.notifications.adapters.smtp import SmtpChannel
from services.notifications.config import NotificationsSettings
from services.notifications.domain.ports import Channel

MIGRATIONS = (messaging_migration(1),)

DOMAIN = "notifications.emporium.dev"


@dataclass
class Notifications:
    app: GrpcApp
    consumer: StreamConsumer
    notifier: OrderEventNotifier
    database: Database


async def wire(settings: NotificationsSettings) -> Notifications:
    database = Database(settings.database_url)
    await database.migrate(MIGRATIONS)
    channel: Channel = (
        MaildirChannel(settings.maildir, settings.smtp_sender)
        if settings.channel == "maildir"
        else SmtpChannel(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_sender,
            settings.smtp_timeout_seconds,
        )
    )
    notifier = OrderEventNotifier(channel, settings.recipient_domain)
    # The stream's producer declares it; notifications only reads it.
    (orders_stream,) = fleet_contract().streams_read_by(CONSUMER)
    consumer = StreamConsumer(
        settings.broker(),
        Topology(),
        orders_stream,
        notifier,
        name=CONSUMER,
        database=database,
        start=settings.start_from,
        prefetch=settings.prefetch,
    )
    messaging = ServiceMessaging(settings.broker(), Topology(), None)  # it publishes nothing
    messaging.add(consumer)
    # No RPCs of its own: the server is there for health checks (and the mesh).
    app = GrpcApp(
        "notifications",
        settings,
        domain=DOMAIN,
        policy={},
        tokens=identity_tokens(settings, "notifications", DOMAIN),
    )
    app.add_health_check("database", database.ping)
    messaging.attach(app)
    app.on_stop(database.dispose)
    return Notifications(app, consumer, notifier, database)


async def build(settings: NotificationsSettings) -> GrpcApp:
    return (await wire(settings)).app
