"""Wiring: the payments service is a gRPC server and a worker on `payments.charge`."""

from __future__ import annotations

from datetime import timedelta

from emporium.payments.v1 import payments_service_pb2_grpc as pb_grpc
from libs.messaging.consumer import WorkConsumer
from libs.messaging.contract import fleet_contract
from libs.messaging.service import ServiceMessaging
from libs.rpcclient.upstream import Upstream, UpstreamPolicy
from libs.runtime.periodic import Periodic
from libs.security.identity_tokens import identity_tokens
from libs.security.service_channels import service_channels
from libs.server.grpc_app import GrpcApp
from libs.storage.database import Database, database_errors
from services.payments.adapters.charge_queue import ChargeHandler
from services.payments.adapters.order_book import GrpcOrderBook, TrustingOrderBook
from services.payments.adapters.simulator import SimulatedProvider
from services.payments.adapters.sql_repository import MIGRATIONS, SqlPaymentRepository
from services.payments.api.policy import POLICY
from services.payments.api.servicer import DOMAIN, PaymentsServicer
from services.payments.config import PaymentsSettings
from services.payments.domain.payments import Payments
from services.payments.domain.ports import OrderBook


async def build(settings: PaymentsSettings) -> GrpcApp:
    database = Database(settings.database_url)
    await database.migrate(MIGRATIONS)
    shape = fleet_contract().topology(
        "payments",
        max_deliveries=settings.max_deliveries,
        retry_delays=settings.retry_delays_seconds,
    )
    messaging = ServiceMessaging(
        settings.broker(), shape, database, outbox_poll_seconds=settings.outbox_poll_seconds
    )
    provider = SimulatedProvider(
        settings.provider_ledger,
        latency=settings.provider_latency_seconds,
        jitter=settings.provider_latency_jitter_seconds,
        decline_rate=settings.provider_decline_rate,
        transient_failure_rate=settings.provider_transient_failure_rate,
    )
    orders: OrderBook = TrustingOrderBook()
    order_book: GrpcOrderBook | None = None
    if settings.check_orders:
        channels = service_channels(settings, "payments")
        policy = UpstreamPolicy(default_timeout=settings.upstream_timeout_seconds)
        orders = order_book = GrpcOrderBook(
            lambda: Upstream("orders", channels.channel("orders"), policy)
        )
    (charge_queue,) = shape.work_queues
    repository = SqlPaymentRepository(
        database, inbox=charge_queue.name, on_commit=messaging.outbox_written
    )
    payments = Payments(repository, provider, orders)
    reconcile_after = timedelta(seconds=settings.reconcile_after_seconds)

    async def reconcile() -> None:
        await payments.reconcile(reconcile_after)

    reconciler = Periodic("payment-reconciler", settings.reconcile_every_seconds, reconcile)
    messaging.add(
        WorkConsumer(
            settings.broker(),
            shape,
            charge_queue,
            ChargeHandler(payments),
            name="payments",
            prefetch=settings.prefetch,
            concurrency=settings.concurrency,
        )
    )
    app = GrpcApp(
        "payments",
        settings,
        domain=DOMAIN,
        policy=POLICY,
        translators=[database_errors],
        tokens=identity_tokens(settings, "payments", DOMAIN),
    )
    app.add_servicer(pb_grpc.add_PaymentsServiceServicer_to_server, PaymentsServicer(payments))
    app.add_health_check("database", database.ping)
    messaging.attach(app)
    reconciler.attach(app)
    app.on_stop(database.dispose)

    async def close_ledger() -> None:
        provider.close()

    app.on_stop(close_ledger)
    if order_book is not None:
        app.on_stop(order_book.close)
    return app
